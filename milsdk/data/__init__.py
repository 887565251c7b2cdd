"""Bag representation: padding, collation and sequential <-> spatial conversion."""

from milsdk.data.collate import collate_fn, pad_tensors
from milsdk.data.representations import seq_to_spatial, spatial_to_seq

__all__ = ["collate_fn", "pad_tensors", "seq_to_spatial", "spatial_to_seq"]

from milsdk.data.sampler import SizeAwareBatchSampler, padding_waste

__all__ += ["SizeAwareBatchSampler", "padding_waste"]
