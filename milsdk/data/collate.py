"""Batching of variable-size bags: pad to the largest bag and add a mask.

A bag is a dict / ``TensorDict`` of tensors whose first dimension is the instance axis (``X`` (N, D),
``y_inst`` (N,), ``coords`` (N, d), ``adj`` (N, N)). A batch pads every such key to the largest N in the batch
and adds ``mask`` (B, N_max), True = real instance.

Unlike the reference, the mask is **bool** (every milsdk module also accepts uint8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDict

from milsdk.errors import BagError

__all__ = ["pad_tensors", "collate_fn"]


def pad_tensors(
    tensor_list: Sequence[torch.Tensor], padding_value: float = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad tensors of different lengths along dim 0 and stack them.

    Args:
        tensor_list: B tensors, the i-th of shape (n_i, *rest); ``rest`` must agree.
        padding_value: value written in the padded positions.

    Returns:
        padded: (B, max_n, *rest), dtype and device of the first tensor.
        mask: (B, max_n) bool, True where the position holds a real row.
    """
    if len(tensor_list) == 0:
        raise BagError("pad_tensors: got an empty list of tensors")
    first = tensor_list[0]
    rest = tuple(first.shape[1:])
    for i, t in enumerate(tensor_list):
        if t.dim() == 0 or tuple(t.shape[1:]) != rest:
            raise BagError(
                f"pad_tensors: tensor {i} has shape {tuple(t.shape)}, expected (n, {', '.join(map(str, rest))})"
            )
    max_n = max(int(t.shape[0]) for t in tensor_list)
    padded = first.new_full((len(tensor_list), max_n, *rest), padding_value)
    mask = torch.zeros(len(tensor_list), max_n, dtype=torch.bool, device=first.device)
    for i, t in enumerate(tensor_list):
        n = int(t.shape[0])
        padded[i, :n] = t.to(dtype=first.dtype, device=first.device)
        mask[i, :n] = True
    return padded, mask


def _pad_sparse_square(tensor_list: Sequence[torch.Tensor], max_n: int) -> torch.Tensor:
    """Stack sparse (n_i, n_i) matrices into one coalesced sparse (B, max_n, max_n) tensor."""
    indices, values = [], []
    for b, t in enumerate(tensor_list):
        t = t.coalesce()
        idx = t.indices()
        indices.append(torch.cat([torch.full((1, idx.shape[1]), b, dtype=idx.dtype, device=idx.device), idx]))
        values.append(t.values())
    return torch.sparse_coo_tensor(
        torch.cat(indices, dim=1),
        torch.cat(values),
        size=(len(tensor_list), max_n, max_n),
        dtype=tensor_list[0].dtype,
        check_invariants=False,  # built from coalesced inputs; the check costs more than the collate itself
    ).coalesce()


def _pad_dense_square(tensor_list: Sequence[torch.Tensor], max_n: int) -> torch.Tensor:
    """Stack dense (n_i, n_i, *rest) matrices into (B, max_n, max_n, *rest), zero-padded."""
    first = tensor_list[0]
    out = first.new_zeros((len(tensor_list), max_n, max_n, *first.shape[2:]))
    for b, t in enumerate(tensor_list):
        n = t.shape[0]
        out[b, :n, :n] = t
    return out


_SQUARE_KEYS = ("adj",)
# Keys whose first axis is the bag's instances, so their length must agree with X's; other keys (a survival
# label (2,), say) are padded along their first axis without that check.
_INSTANCE_KEYS = ("X", "y_inst", "coords")


def _check_rows(key: str, values: Sequence[torch.Tensor], lengths: list[int] | None) -> None:
    """Every bag's ``key`` is (n_i, *rest) with one ``rest``, and an instance key has the n_i of its bag's X."""
    rest = tuple(values[0].shape[1:])
    for i, v in enumerate(values):
        if v.dim() == 0 or tuple(v.shape[1:]) != rest:
            raise BagError(
                f"collate_fn: bag {i} key {key!r} has shape {tuple(v.shape)}, "
                f"bag 0 has (n, {', '.join(map(str, rest))})"
            )
        if lengths is not None and key in _INSTANCE_KEYS and int(v.shape[0]) != lengths[i]:
            raise BagError(
                f"collate_fn: bag {i} key {key!r} has {int(v.shape[0])} instances, its 'X' has {lengths[i]}"
            )


def _check_square(key: str, values: Sequence[torch.Tensor], lengths: list[int] | None) -> None:
    """Every bag's ``key`` is (n_i, n_i, ...), n_i its number of instances when known."""
    for i, v in enumerate(values):
        n = lengths[i] if lengths is not None else int(v.shape[0]) if v.dim() >= 1 else 0
        if v.dim() < 2 or tuple(v.shape[:2]) != (n, n):
            expected = f"expected ({n}, {n}) for its {n} instances" if lengths is not None else "expected (n, n)"
            raise BagError(f"collate_fn: bag {i} key {key!r} has shape {tuple(v.shape)}, {expected}")


def collate_fn(batch_list: Sequence[Mapping[str, torch.Tensor]], sparse: bool = True) -> TensorDict:
    """Collate bags into one padded batch.

    Scalars (0-dim, e.g. ``Y``) are stacked to (B,); tensors with an instance axis are zero-padded to the largest
    bag; ``adj`` (N, N), dense or sparse COO, is padded on both axes. ``mask`` is added from the first padded key
    (``X`` when present). ``y_inst``, ``coords`` and ``adj`` must have the N of their bag's ``X``.

    Args:
        batch_list: B bags, each a dict or ``TensorDict`` with the same keys, e.g. ``X`` (n_i, D), ``Y`` (),
            ``y_inst`` (n_i,), ``coords`` (n_i, d), ``adj`` (n_i, n_i).
        sparse: keep a sparse ``adj`` sparse (True) or densify it (False).

    Returns:
        TensorDict with ``X`` (B, N, D), ``Y`` (B,), ``mask`` (B, N) bool, and the other keys padded likewise.

    Raises:
        BagError: naming the bag and the key: an empty batch, bags with different keys, a key whose trailing shape
            differs between bags (features of another D), or an instance key whose length is not its bag's N.
    """
    if len(batch_list) == 0:
        raise BagError("collate_fn: got an empty batch")
    keys = list(batch_list[0].keys())
    for i, bag in enumerate(batch_list):
        if set(bag.keys()) != set(keys):
            raise BagError(f"collate_fn: bag {i} has keys {sorted(bag.keys())}, bag 0 has {sorted(keys)}")
    out: dict[str, torch.Tensor] = {}
    mask: torch.Tensor | None = None
    lengths: list[int] | None = None
    ordered = (["X"] if "X" in keys else []) + [k for k in keys if k != "X"]
    for key in ordered:
        values = [torch.as_tensor(bag[key]) for bag in batch_list]
        if values[0].dim() == 0:
            out[key] = torch.stack(values)
        elif key in _SQUARE_KEYS:
            _check_square(key, values, lengths)
            n_max = max(int(v.shape[0]) for v in values) if lengths is None else max(lengths)
            if values[0].is_sparse:
                adj = _pad_sparse_square(values, n_max)
                out[key] = adj if sparse else adj.to_dense()
            else:
                out[key] = _pad_dense_square(values, n_max)
        else:
            _check_rows(key, values, lengths if "X" in keys else None)
            padded, key_mask = pad_tensors(values)
            out[key] = padded
            if mask is None:
                mask, lengths = key_mask, [int(v.shape[0]) for v in values]
    if mask is not None:
        out["mask"] = mask
    return TensorDict(out, batch_size=[])
