"""Transformer layers and encoders (pre-norm; every layer takes a (B, N) mask)."""

from milsdk.nn.transformers.nystrom_transformer import NystromTransformerEncoder, NystromTransformerLayer

__all__ = ["NystromTransformerEncoder", "NystromTransformerLayer"]
