import pytest
import torch

from milsdk.data import collate_fn, pad_tensors
from milsdk.errors import BagError


def test_pad_tensors_shapes_values_and_mask():
    a, b = torch.ones(2, 3), 2 * torch.ones(4, 3)
    padded, mask = pad_tensors([a, b], padding_value=-1)
    assert padded.shape == (2, 4, 3)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert torch.equal(padded[0, :2], a) and torch.all(padded[0, 2:] == -1)
    assert torch.equal(padded[1], b)


def test_pad_tensors_single_tensor_adds_batch_dim():
    x = torch.arange(6.0).reshape(3, 2)
    padded, mask = pad_tensors([x])
    assert padded.shape == (1, 3, 2) and mask.all()


def test_pad_tensors_rejects_mismatched_trailing_shape():
    with pytest.raises(BagError, match=r"tensor 1 has shape \(2, 4\)"):
        pad_tensors([torch.zeros(2, 3), torch.zeros(2, 4)])


def test_collate_dense_keys_scalars_and_mask():
    bags = [
        {"X": torch.randn(3, 5), "Y": torch.tensor(1), "y_inst": torch.tensor([0, 1, 0]), "coords": torch.zeros(3, 2)},
        {"X": torch.randn(5, 5), "Y": torch.tensor(0), "y_inst": torch.zeros(5, dtype=torch.long), "coords": torch.ones(5, 2)},
    ]
    batch = collate_fn(bags)
    assert batch["X"].shape == (2, 5, 5)
    assert batch["Y"].tolist() == [1, 0]
    assert batch["y_inst"].shape == (2, 5)
    assert batch["coords"].shape == (2, 5, 2)
    assert batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(1).tolist() == [3, 5]
    assert torch.equal(batch["X"][0, :3], bags[0]["X"]) and torch.all(batch["X"][0, 3:] == 0)


def _sparse(n, edges):
    idx = torch.tensor(edges, dtype=torch.long).T
    return torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1]), (n, n), check_invariants=True).coalesce()


def test_collate_sparse_adj_padded_to_largest_bag():
    bags = [
        {"X": torch.randn(2, 3), "adj": _sparse(2, [(0, 1), (1, 0)]), "Y": torch.tensor(0)},
        {"X": torch.randn(3, 3), "adj": _sparse(3, [(0, 2), (2, 0)]), "Y": torch.tensor(1)},
    ]
    batch = collate_fn(bags)
    adj = batch["adj"]
    assert adj.is_sparse and adj.shape == (2, 3, 3)
    dense = adj.to_dense()
    assert dense[0, 0, 1] == 1 and dense[0, 2].sum() == 0
    assert dense[1, 0, 2] == 1 and dense[1, 2, 0] == 1
    dense_batch = collate_fn(bags, sparse=False)
    assert not dense_batch["adj"].is_sparse
    assert torch.equal(dense_batch["adj"], dense)


def test_collate_dense_adj():
    bags = [{"X": torch.randn(2, 3), "adj": torch.ones(2, 2)}, {"X": torch.randn(4, 3), "adj": torch.ones(4, 4)}]
    adj = collate_fn(bags)["adj"]
    assert adj.shape == (2, 4, 4) and adj[0].sum() == 4 and adj[1].sum() == 16


def test_collate_rejects_inconsistent_keys_and_empty_batch():
    with pytest.raises(BagError, match="bag 1 has keys"):
        collate_fn([{"X": torch.zeros(1, 2)}, {"X": torch.zeros(1, 2), "Y": torch.tensor(0)}])
    with pytest.raises(BagError, match="empty batch"):
        collate_fn([])
