"""The edge-list adjacency: conversion from dense / sparse adj, propagation = adj @ X, degrees, edge softmax,
masking, and export to ONNX with dynamic node and edge counts."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from milsdk.nn.adjacency import (
    edge_list_from_adj,
    edge_softmax,
    node_degree,
    propagate,
    resolve_edges,
    scatter_add_rows,
)


def random_adj(B: int = 3, N: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    adj = torch.rand(B, N, N, generator=g) * (torch.rand(B, N, N, generator=g) < 0.3)
    adj[1] = 0  # a bag without edges
    return adj


def test_dense_and_sparse_adj_give_the_same_edge_list_and_propagate_equals_matmul():
    adj = random_adj()
    X = torch.randn(3, 7, 4)
    for form in (adj, adj.to_sparse()):
        edge_index, edge_weight = edge_list_from_adj(form)
        assert edge_index.shape[:2] == (3, 2) and edge_weight.shape == (3, edge_index.shape[2])
        assert edge_index.shape[2] == int((adj != 0).sum((1, 2)).max())
        assert torch.allclose(propagate(X, edge_index, edge_weight), adj @ X, atol=1e-6)
        assert torch.allclose(node_degree(edge_index, edge_weight, 7), adj.sum(2), atol=1e-6)
    assert float(edge_weight[1].abs().sum()) == 0.0  # the bag without edges has only padding edges


def test_hand_case_two_edges():
    edge_index = torch.tensor([[[0, 1], [1, 0]]])  # A[0, 1] = 2, A[1, 0] = 3
    edge_weight = torch.tensor([[2.0, 3.0]])
    X = torch.tensor([[[1.0], [10.0], [100.0]]])
    assert propagate(X, edge_index, edge_weight).flatten().tolist() == [20.0, 3.0, 0.0]


def test_mask_drops_edges_to_padding_and_both_forms_resolve_alike():
    adj = random_adj()
    X = torch.randn(3, 7, 4)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    masked_adj = adj * mask[:, :, None] * mask[:, None, :]
    from_adj = resolve_edges(X, adj=adj, mask=mask)
    from_edges = resolve_edges(X, edge_index=edge_list_from_adj(adj)[0], edge_weight=edge_list_from_adj(adj)[1],
                               mask=mask.to(torch.uint8))
    for edge_index, edge_weight in (from_adj, from_edges):
        assert torch.allclose(propagate(X, edge_index, edge_weight), masked_adj @ X, atol=1e-6)
    with pytest.raises(ValueError, match="needs adj"):
        resolve_edges(X)


def test_edge_softmax_is_a_softmax_over_each_rows_edges():
    adj = (random_adj() > 0).float()
    edge_index, edge_weight = edge_list_from_adj(adj)
    scores = torch.randn(edge_weight.shape)
    att = edge_softmax(scores, edge_index, edge_weight, 7)
    dense_scores = torch.full((3, 7, 7), float("-inf"))
    for b in range(3):
        for e in range(edge_index.shape[2]):
            if edge_weight[b, e] != 0:
                dense_scores[b, edge_index[b, 0, e], edge_index[b, 1, e]] = scores[b, e]
    want = torch.nan_to_num(torch.softmax(dense_scores, dim=2), nan=0.0)
    got = torch.zeros(3, 7, 7)
    for b in range(3):
        for e in range(edge_index.shape[2]):
            if edge_weight[b, e] != 0:
                got[b, edge_index[b, 0, e], edge_index[b, 1, e]] = att[b, e]
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.isfinite(att).all() and float(att[1].abs().sum()) == 0.0
    assert edge_softmax(scores.unsqueeze(-1).expand(-1, -1, 2), edge_index, edge_weight, 7).shape == (3, scores.shape[1], 2)


class _Propagate(torch.nn.Module):
    def forward(self, X, edge_index, edge_weight):
        return propagate(X, edge_index, edge_weight), edge_softmax(edge_weight, edge_index, edge_weight, X.shape[1])


def test_propagation_exports_to_onnx_with_dynamic_nodes_and_edges(tmp_path):
    B, N, E = torch.export.Dim("B", min=1), torch.export.Dim("N", min=2), torch.export.Dim("E", min=2)
    adj = random_adj(2, 6)
    edge_index, edge_weight = edge_list_from_adj(adj)
    X = torch.randn(2, 6, 3)
    program = torch.onnx.export(
        _Propagate(), (X, edge_index, edge_weight), dynamo=True, verbose=False,
        dynamic_shapes={"X": {0: B, 1: N}, "edge_index": {0: B, 2: E}, "edge_weight": {0: B, 1: E}},
    )
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    adj = random_adj(3, 11, seed=4)
    edge_index, edge_weight = edge_list_from_adj(adj)
    X = torch.randn(3, 11, 3)
    got, got_att = session.run(None, {"x": X.numpy(), "edge_index": edge_index.numpy(), "edge_weight": edge_weight.numpy()})
    np.testing.assert_allclose(got, (adj @ X).numpy(), atol=1e-5)
    np.testing.assert_allclose(got_att, edge_softmax(edge_weight, edge_index, edge_weight, 11).numpy(), atol=1e-6)


def test_an_adj_of_the_wrong_shape_names_the_shapes():
    X = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"adj must be \(B, N, N\) with N = 5 instances, got shape \(2, 5\)"):
        resolve_edges(X, adj=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"got shape \(2, 4, 4\)"):
        resolve_edges(X, adj=torch.ones(2, 4, 4))


class _ScatterRows(torch.nn.Module):
    def forward(self, values, rows, n_like):
        return scatter_add_rows(values, rows, n_like.shape[0]), propagate(
            values.unsqueeze(0), torch.stack([rows, rows.flip(0)]).unsqueeze(0), values[:, 0].unsqueeze(0)
        )


def test_row_sums_are_exact_and_the_same_on_every_onnxruntime_thread_count():
    """Many duplicate targets, 150 columns (three blocks, the last partial): the exported scatter equals numpy's
    add.at on 1, 2 and 4 threads, every run. (index_add exported as ScatterND lost updates on 2 threads.)"""
    n_rows, M, C = 300, 6000, 150
    g = torch.Generator().manual_seed(3)
    values = torch.randn(M, C, generator=g, dtype=torch.float64).float()
    rows = torch.randint(0, n_rows, (M,), generator=g)
    M_dim, R_dim = torch.export.Dim("M", min=2), torch.export.Dim("R", min=2)
    program = torch.onnx.export(
        _ScatterRows(), (values, rows, torch.zeros(n_rows)), dynamo=True, verbose=False,
        dynamic_shapes={"values": {0: M_dim}, "rows": {0: M_dim}, "n_like": {0: R_dim}},
    )
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert "ScatterND" not in ops and "ScatterElements" in ops
    want = np.zeros((n_rows, C))
    np.add.at(want, rows.numpy(), values.numpy().astype(np.float64))
    eager, _ = _ScatterRows()(values, rows, torch.zeros(n_rows))
    np.testing.assert_allclose(eager.numpy(), want, atol=1e-4)
    feed = {"values": values.numpy(), "rows": rows.numpy(), "n_like": np.zeros(n_rows, np.float32)}
    for threads in (1, 2, 4):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        runs = [session.run(None, feed) for _ in range(5)]
        for got, got_propagated in runs:
            np.testing.assert_allclose(got, want, atol=1e-4)
            assert np.array_equal(got, runs[0][0]) and np.array_equal(got_propagated, runs[0][1])
    np.testing.assert_allclose(scatter_add_rows(values[:, 0], rows, n_rows).numpy(), want[:, 0], atol=1e-4)
