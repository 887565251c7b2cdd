"""Attention blocks."""

from milsdk.nn.attention.attention_pool import AttentionPool

__all__ = ["AttentionPool"]
