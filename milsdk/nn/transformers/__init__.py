"""Transformer layers and encoders (pre-norm; every layer takes a (B, N) mask)."""

from milsdk.nn.transformers.nystrom_transformer import NystromTransformerEncoder, NystromTransformerLayer

__all__ = ["NystromTransformerEncoder", "NystromTransformerLayer"]

from milsdk.nn.transformers.conventional_transformer import TransformerEncoder, TransformerLayer
from milsdk.nn.transformers.encoder import Encoder
from milsdk.nn.transformers.layer import Layer

__all__ += ["Encoder", "Layer", "TransformerEncoder", "TransformerLayer"]

from milsdk.nn.transformers.irpe_transformer import iRPETransformerEncoder, iRPETransformerLayer  # noqa: E402
from milsdk.nn.transformers.t2t import T2TLayer  # noqa: E402

__all__ += ["T2TLayer", "iRPETransformerEncoder", "iRPETransformerLayer"]

from milsdk.nn.transformers.sm_transformer import SmTransformerEncoder, SmTransformerLayer  # noqa: E402

__all__ += ["SmTransformerEncoder", "SmTransformerLayer"]
