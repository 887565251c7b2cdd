"""GCNConv: shapes, a hand case, the edgeless graph, dense / sparse / edge-list agreement, masking, TorchScript."""

from __future__ import annotations

import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.gnns import GCNConv


def sym_adj(B: int = 2, N: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(B, N, N, generator=g) * (torch.rand(B, N, N, generator=g) < 0.4)
    return A + A.transpose(1, 2)


def test_shapes_and_out_dim_forced_without_weights():
    x, A = torch.randn(2, 6, 3), sym_adj()
    assert GCNConv(3, 5, learn_weights=True)(x, A).shape == (2, 6, 5)
    assert GCNConv(3, 5)(x, A).shape == (2, 6, 3)  # no Linear: out_dim = in_dim, as in the reference
    assert GCNConv(None, 4, learn_weights=True)(x, A).shape == (2, 6, 4)


def test_hand_case_three_nodes_two_features():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    A = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 2.0, 0.0]]])
    y = GCNConv(2, add_self_loops=True)(x, A)
    expected = torch.tensor([[[1 + 3, 2 + 4], [3 + 0.5 + 2.5, 4 + 1 + 3], [5 + 6, 6 + 8]]])
    assert torch.equal(y, expected)


def test_graph_without_edges_equals_its_linear_part():
    conv = GCNConv(3, 4, add_self_loops=True, learn_weights=True)
    x = torch.randn(2, 5, 3)
    assert torch.allclose(conv(x, torch.zeros(2, 5, 5)), conv.fc(x), atol=1e-6)
    no_edges = torch.zeros(2, 2, 0, dtype=torch.long)
    assert torch.allclose(conv(x, edge_index=no_edges, edge_weight=torch.zeros(2, 0)), conv.fc(x), atol=1e-6)


def test_dense_sparse_and_edge_list_agree():
    conv = GCNConv(3, 4, add_self_loops=True, learn_weights=True, layer_norm=True, normalize=True,
                   activation=torch.nn.ReLU())
    x, A = torch.randn(2, 6, 3), sym_adj()
    edge_index, edge_weight = edge_list_from_adj(A)
    dense = conv(x, A)
    assert torch.allclose(conv(x, A.to_sparse()), dense, atol=1e-6)
    assert torch.allclose(conv(x, edge_index=edge_index, edge_weight=edge_weight), dense, atol=1e-6)
    scripted = torch.jit.script(conv)
    assert torch.allclose(scripted(x, edge_index=edge_index, edge_weight=edge_weight), dense, atol=1e-6)


def test_padding_never_changes_real_rows():
    conv = GCNConv(3, 4, add_self_loops=True, learn_weights=True, layer_norm=True)
    x, A = torch.randn(1, 4, 3), sym_adj(1, 4)
    alone = conv(x, A)
    padded_x = torch.cat([x, 100 * torch.randn(1, 3, 3)], dim=1)
    padded_A = torch.ones(1, 7, 7)  # padded nodes are linked to everything: the mask must drop those edges
    padded_A[:, :4, :4] = A[0]
    for mask in (torch.tensor([[1, 1, 1, 1, 0, 0, 0]], dtype=torch.uint8), torch.arange(7).lt(4).unsqueeze(0)):
        assert torch.allclose(conv(padded_x, padded_A, mask)[:, :4], alone, atol=1e-5)
