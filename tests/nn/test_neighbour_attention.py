"""NeighbourAttention: shapes, attention only over each node's edges (a dense reference computation and a hand
case), masking, dense / sparse adj = edge list, TorchScript."""

from __future__ import annotations

import math

import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.attention import NeighbourAttention

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def random_adj(B: int = 3, N: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    adj = torch.rand(B, N, N, generator=g) * (torch.rand(B, N, N, generator=g) < 0.4)
    adj[:, 2, :] = 0  # node 2 has no outgoing edge
    return adj


def dense_reference(block: NeighbourAttention, X: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """The same attention computed the plain way: N x N scores, softmax over each row's non-zero entries."""
    q, k = block.qk(X).chunk(2, dim=-1)
    v = block.v(X)
    scores = adj * (q @ k.transpose(1, 2)) / math.sqrt(block.att_dim)
    scores = scores.masked_fill(adj == 0, float("-inf"))
    alpha = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)  # rows without edges: 0
    return alpha @ v


def test_shapes_and_dense_reference():
    torch.manual_seed(0)
    block = NeighbourAttention(5, att_dim=4)
    X, adj = torch.randn(3, 7, 5), random_adj()
    L, alpha = block(X, adj, return_att=True)
    assert L.shape == (3, 7, 5) and alpha.shape == (3, int((adj != 0).sum((1, 2)).max()))
    assert torch.allclose(L, dense_reference(block, X, adj), atol=1e-6)
    assert bool((L[:, 2] == 0).all())  # no edges, nothing to attend to


def test_hand_case_path_graph():
    # Path 0 - 1 - 2 (weights 1); identity projections of size 1: q = k = v = x, scale 1.
    block = NeighbourAttention(1, att_dim=1)
    with torch.no_grad():
        block.qk.weight.copy_(torch.ones(2, 1))
        block.v.weight.copy_(torch.ones(1, 1))
    X = torch.tensor([[[1.0], [2.0], [3.0]]])
    edge_index = torch.tensor([[[0, 1, 1, 2], [1, 0, 2, 1]]])
    L = block(X, edge_index=edge_index)
    # node 0 and node 2 have one neighbour (1): l = x_1 = 2; node 1 attends to 0 and 2 with scores 2 and 6.
    w0, w2 = math.exp(2.0), math.exp(6.0)
    expected = torch.tensor([2.0, (w0 * 1.0 + w2 * 3.0) / (w0 + w2), 2.0])
    assert torch.allclose(L.flatten(), expected, atol=1e-6)


def test_only_neighbours_matter():
    torch.manual_seed(0)
    block = NeighbourAttention(3, att_dim=4)
    adj = torch.zeros(1, 5, 5)
    adj[0, 0, 1] = adj[0, 1, 0] = adj[0, 0, 2] = adj[0, 2, 0] = 1.0  # 0 ~ {1, 2}; 3, 4 elsewhere
    adj[0, 3, 4] = adj[0, 4, 3] = 1.0
    X = torch.randn(1, 5, 3)
    Y = X.clone()
    Y[0, 3:] = torch.randn(2, 3) * 100  # change non-neighbours of 0, 1, 2
    L_x, L_y = block(X, adj), block(Y, adj)
    assert torch.allclose(L_x[0, :3], L_y[0, :3], atol=0)
    assert not torch.allclose(L_x[0, 3:], L_y[0, 3:])


def test_padding_never_changes_real_outputs_bool_and_uint8():
    torch.manual_seed(0)
    block = NeighbourAttention(4, att_dim=8)
    adj = torch.ones(1, 6, 6)  # padded nodes 4, 5 are connected to everything
    X = torch.randn(1, 6, 4)
    alone = block(X[:, :4], adj[:, :4, :4])
    for dtype in (torch.bool, torch.uint8):
        mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=dtype)
        for garbage in (0.0, 1e3):
            X_pad = X.clone()
            X_pad[0, 4:] = garbage
            out = block(X_pad, adj, mask)
            assert torch.allclose(out[:, :4], alone, atol=1e-6)
            assert bool((out[:, 4:] == 0).all())


def test_dense_sparse_and_edge_list_agree_and_edge_attention_sums_to_one():
    torch.manual_seed(0)
    block = NeighbourAttention(5, att_dim=4)
    X, adj = torch.randn(3, 7, 5), random_adj(seed=1)
    edge_index, edge_weight = edge_list_from_adj(adj)
    dense, alpha = block(X, adj, return_att=True)
    sparse = block(X, adj.to_sparse())
    listed = block(X, edge_index=edge_index, edge_weight=edge_weight)
    assert torch.allclose(dense, sparse, atol=1e-6) and torch.allclose(dense, listed, atol=1e-6)
    per_row = torch.zeros(3, 7).scatter_add(1, edge_index[:, 0], alpha)
    has_edges = (adj != 0).any(-1)
    assert torch.allclose(per_row[has_edges], torch.ones(int(has_edges.sum())), atol=1e-6)
    assert bool((per_row[~has_edges] == 0).all())


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_scripts_and_matches_eager():
    torch.manual_seed(0)
    block = NeighbourAttention(5, att_dim=4)
    X, adj = torch.randn(2, 7, 5), random_adj(B=2)
    edge_index, edge_weight = edge_list_from_adj(adj)
    scripted = torch.jit.script(block)
    assert torch.allclose(
        scripted(X, edge_index=edge_index, edge_weight=edge_weight), block(X, adj), atol=1e-6
    )
