"""Bag representation: padding, collation, sequential <-> spatial conversion, size-aware batching."""

from milsdk.data.collate import collate_fn, pad_tensors
from milsdk.data.representations import seq_to_spatial, spatial_to_seq
from milsdk.data.sampler import SizeAwareBatchSampler, padding_waste

__all__ = ["SizeAwareBatchSampler", "collate_fn", "pad_tensors", "padding_waste", "seq_to_spatial", "spatial_to_seq"]
