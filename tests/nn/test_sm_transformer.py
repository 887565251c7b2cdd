"""SmTransformerLayer / SmTransformerEncoder: the Layer computation with Sm on the attention, equality with
the plain transformer at alpha = 0, masking, no NaN attention maps under a mask (defect 8.2), add_self with
any att_dim (defect 8.4), dense vs edge list, TorchScript."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.adjacency import edge_list_from_adj
from milsdk.nn.transformers import (
    SmTransformerEncoder,
    SmTransformerLayer,
    TransformerEncoder,
    TransformerLayer,
)

SIZES = [7, 4, 1]


def inputs(D: int = 6):
    torch.manual_seed(0)
    X = torch.randn(3, 7, D)
    adj = torch.zeros(3, 7, 7)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for b, k in enumerate(SIZES):
        mask[b, :k] = True
        if k > 2:
            ring = torch.roll(torch.eye(k), 1, 0)
            adj[b, :k, :k] = 0.5 * (ring + ring.T)
    return X, adj, mask


def test_alpha_zero_is_the_plain_transformer():
    X, adj, mask = inputs()
    layer = SmTransformerLayer(6, 5, att_dim=8, n_heads=2, sm_alpha=0.0)
    plain = TransformerLayer(6, 5, att_dim=8, n_heads=2)
    plain.load_state_dict(layer.state_dict())
    assert torch.allclose(layer(X, adj, mask)[mask], plain(X, mask)[mask], atol=1e-6)
    encoder = SmTransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2, sm_alpha=0.0)
    plain_encoder = TransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2)
    plain_encoder.load_state_dict(encoder.state_dict())
    assert torch.allclose(encoder(X, adj, mask)[mask], plain_encoder(X, mask)[mask], atol=1e-5)


def test_layer_smooths_the_attention_output():
    X, adj, mask = inputs()
    layer = SmTransformerLayer(6, att_dim=8, n_heads=2, use_mlp=False, sm_alpha=0.5)
    # without MLP: Y = out_proj(att_proj(X) + Sm(MHSA(LN X)))
    A = layer.att_module(layer.norm1(X), adj, mask)
    want = layer.out_proj(layer.att_proj(X) + A)
    assert torch.allclose(layer(X, adj, mask), want, atol=1e-6)
    with pytest.raises(ValueError, match="edge_index"):
        layer.forward_att(X, mask)


@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_encoder_masking_and_attention_maps(mode):
    X, adj, mask = inputs()
    encoder = SmTransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2, add_self=True, sm_mode=mode)
    Y, att = encoder(X, adj, mask, return_att=True)
    assert Y.shape == (3, 7, 6) and att.shape == (2, 3, 2, 7, 7)
    assert torch.isfinite(att).all() and torch.isfinite(Y).all()
    assert float(att[:, 1, :, :, 4:].abs().max()) == 0.0  # padded keys / queries of bag 1: 0, not NaN
    assert torch.allclose(encoder(X, adj, mask), Y, atol=1e-5)  # the memory-efficient path: same outputs
    junk_X, junk_adj = X.clone(), adj.clone()
    junk_X[~mask] = 20.0
    junk_adj[1, :, 4:] = 0.3
    junk_adj[2, 1:, :] = 0.3
    assert torch.allclose(encoder(junk_X, junk_adj, mask.to(torch.uint8))[mask], Y[mask], atol=1e-5)
    for b, k in enumerate(SIZES):
        alone = encoder(X[b : b + 1, :k], adj[b : b + 1, :k, :k])
        assert torch.allclose(alone, Y[b : b + 1, :k], atol=1e-5)


def test_add_self_with_any_att_dim_and_layout():
    encoder = SmTransformerEncoder(6, att_dim=16, n_heads=4, n_layers=3, add_self=True)
    assert [(layer.in_dim, layer.out_dim) for layer in encoder.layers] == [(6, 6)] * 3
    encoder = SmTransformerEncoder(6, out_dim=3, att_dim=16, n_heads=4, n_layers=3)
    assert [(layer.in_dim, layer.out_dim) for layer in encoder.layers] == [(6, 16), (16, 16), (16, 3)]
    with pytest.raises(ValueError, match="out_dim"):
        SmTransformerEncoder(6, out_dim=3, add_self=True)


def test_dense_sparse_edge_list_and_torchscript_agree():
    X, adj, mask = inputs()
    encoder = SmTransformerEncoder(6, att_dim=8, n_heads=2, n_layers=2).eval()
    edge_index, edge_weight = edge_list_from_adj(adj)
    Y = encoder(X, adj, mask)
    assert torch.allclose(encoder(X, adj.to_sparse(), mask), Y, atol=1e-6)
    assert torch.allclose(encoder(X, mask=mask, edge_index=edge_index, edge_weight=edge_weight), Y, atol=1e-6)
    scripted = torch.jit.script(encoder)
    assert torch.allclose(scripted(X, None, mask, False, edge_index, edge_weight), Y, atol=1e-6)
    scripted_layer = torch.jit.script(encoder.layers[0])
    want = encoder.layers[0](X, adj, mask)
    assert torch.allclose(scripted_layer(X, None, mask, False, edge_index, edge_weight), want, atol=1e-6)
