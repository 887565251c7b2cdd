"""DeepGCNLayer: the four skip connections, masking, the identity conv, TorchScript."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.gnns import DeepGCNLayer, GCNConv


def test_blocks_compute_their_formulas():
    x = torch.randn(2, 5, 3)
    A = (torch.rand(2, 5, 5) < 0.5).float()
    conv, norm, act = GCNConv(3, 3, learn_weights=True), torch.nn.LayerNorm(3), torch.nn.ReLU()
    h = act(norm(conv(x, A)))
    assert torch.allclose(DeepGCNLayer(conv, norm, act, "plain")(x, A), h)
    assert torch.allclose(DeepGCNLayer(conv, norm, act, "res")(x, A), x + h)
    assert torch.allclose(DeepGCNLayer(conv, norm, act, "dense")(x, A), torch.cat([x, h], -1))
    assert torch.allclose(DeepGCNLayer(conv, norm, act, "res+")(x, A), x + conv(act(norm(x)), A))
    assert torch.equal(DeepGCNLayer()(x, A), x)  # no conv, norm or act: the identity
    with pytest.raises(ValueError, match="block"):
        DeepGCNLayer(block="resnet")


def test_edge_list_masking_and_script():
    layer = DeepGCNLayer(GCNConv(3, 4, add_self_loops=True, learn_weights=True), torch.nn.LayerNorm(4),
                         torch.nn.ReLU(), "plain").eval()
    x = torch.randn(1, 4, 3)
    A = (torch.rand(1, 4, 4) < 0.6).float()
    alone = layer(x, A)
    padded_x = torch.cat([x, torch.randn(1, 2, 3)], 1)
    padded_A = torch.ones(1, 6, 6)
    padded_A[:, :4, :4] = A
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.uint8)
    edge_index, edge_weight = edge_list_from_adj(padded_A)
    assert torch.allclose(layer(padded_x, padded_A, mask)[:, :4], alone, atol=1e-5)
    scripted = torch.jit.script(layer)
    got = scripted(padded_x, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
    assert torch.allclose(got[:, :4], alone, atol=1e-5)
