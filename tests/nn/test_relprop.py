"""milsdk.nn.relprop: LRP rules on tiny cases computed by hand, conservation, and the relprop transformer's
shapes (its equality with torchmil's is tested in tests/compat/test_torchmil_parity.py)."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn import relprop as rp


def test_safe_divide_is_zero_where_the_denominator_is_zero():
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 0.0, -1e-9, -4.0])
    out = rp.safe_divide(a, b)
    assert out[1] == 0 and torch.isfinite(out).all()
    assert torch.allclose(out[[0, 3]], torch.tensor([0.5, -1.0]))


def test_linear_alpha_beta_rule_by_hand():
    # x = (1, -2), one output with w = (3, 1), bias 5 (excluded): contributions +3 and -2.
    # alpha = 1 (beta = 0): all relevance by the positive contribution's share -> x_1 gets R; alpha = 2 (beta = 1):
    # 2 R to the positive contribution, -1 R to the negative one (its share of the negative part).
    layer = rp.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 1.0]]))
        layer.bias.fill_(5.0)
    layer(torch.tensor([[1.0, -2.0]]))
    R = torch.tensor([[0.7]])
    assert torch.allclose(layer.relprop(R, alpha=1.0), torch.tensor([[0.7, 0.0]]), atol=1e-6)
    assert torch.allclose(layer.relprop(R, alpha=2.0), torch.tensor([[1.4, -0.7]]), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_linear_conserves_relevance(alpha):
    # Conservation holds where each output has positive and negative contributions (else that part's share of
    # the relevance has no input to go to): positive inputs, and every weight row with both signs.
    torch.manual_seed(0)
    layer = rp.Linear(6, 4)
    with torch.no_grad():
        layer.weight[:, 0] = 1.0
        layer.weight[:, 1] = -1.0
    layer(torch.rand(3, 5, 6) + 0.1)
    R = torch.randn(3, 5, 4)
    R_in = layer.relprop(R, alpha=alpha)
    assert R_in.shape == (3, 5, 6)
    assert torch.allclose(R_in.sum(-1), R.sum(-1), atol=1e-5)  # per token: sum_i R_i = sum_j R_j


def test_add_splits_relevance_by_the_operands_shares():
    add = rp.Add()
    a, b = torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, -1.0]])
    add([a, b])
    R = torch.tensor([[2.0, 4.0]])
    Ra, Rb = add.relprop(R)
    # gradient x input: a * R / (a + b) = (1, 6), b * R / (a + b) = (1, -2); sums 7 and -1 share sum R = 6 as
    # 7/8 and 1/8, each operand rescaled to its share.
    assert torch.allclose(Ra, torch.tensor([[1.0, 6.0]]) * (6 * 7 / 8) / 7, atol=1e-6)
    assert torch.allclose(Rb, torch.tensor([[1.0, -2.0]]) * (6 * 1 / 8) / -1, atol=1e-6)
    assert torch.allclose(Ra.sum() + Rb.sum(), R.sum())


def test_gradient_x_input_layers_conserve_relevance():
    pool = rp.AvgPool2d(2)
    x = torch.rand(1, 2, 4, 4) + 0.1
    pool(x)
    R = torch.rand(1, 2, 2, 2)
    assert torch.allclose(pool.relprop(R).sum(), R.sum(), atol=1e-5)
    cat = rp.Cat()
    cat([torch.ones(2, 1), 2 * torch.ones(2, 3)], 1)
    r1, r2 = cat.relprop(torch.arange(8.0).reshape(2, 4))
    assert torch.allclose(r1.flatten(), torch.tensor([0.0, 4.0])) and r2.shape == (2, 3)
    select = rp.IndexSelect()
    select(torch.tensor([[1.0, 2.0, 3.0]]), 1, torch.tensor([2]))
    assert torch.allclose(select.relprop(torch.tensor([[5.0]])), torch.tensor([[0.0, 0.0, 5.0]]))
    eye = rp.AddEye()
    m = torch.rand(1, 1, 3, 3)
    assert torch.allclose(eye(m), m + torch.eye(3))


def test_clone_sums_the_relevance_of_its_copies():
    clone = rp.Clone()
    x = torch.tensor([2.0, -1.0])
    copies = clone(x, 2)
    assert len(copies) == 2 and all(c is x for c in copies)
    assert torch.allclose(clone.relprop((torch.tensor([1.0, 1.0]), torch.tensor([0.5, -3.0]))),
                          torch.tensor([1.5, -2.0]))


def test_pass_through_layers_and_sequential():
    for layer in (rp.ReLU(), rp.GELU(), rp.Softmax(dim=-1), rp.LayerNorm(3), rp.Dropout(0.1), rp.Identity()):
        layer(torch.randn(2, 3))
        R = torch.randn(2, 3)
        assert layer.relprop(R) is R
    seq = rp.Sequential(rp.Linear(3, 4), rp.ReLU(), rp.Linear(4, 2))
    seq(torch.randn(5, 3))
    R = torch.randn(5, 2)
    assert torch.allclose(seq.relprop(R, 1.5), seq[0].relprop(seq[2].relprop(R, 1.5), 1.5))  # last layer first


def test_batchnorm_relevance_is_unchanged():
    bn = rp.BatchNorm2d(2).eval()
    bn(torch.rand(1, 2, 3, 3) + 0.5)
    R = torch.rand(1, 2, 3, 3)
    assert torch.allclose(bn.relprop(R), R, atol=1e-6)


@pytest.mark.parametrize("use_mlp, n_layers", [(True, 1), (False, 2)])
def test_transformer_encoder_shapes_and_attention_relevances(use_mlp, n_layers):
    torch.manual_seed(0)
    enc = rp.TransformerEncoder(6, att_dim=8, n_heads=2, n_layers=n_layers, use_mlp=use_mlp).eval()
    X = torch.randn(1, 5, 6)
    Y = enc(X)
    assert Y.shape == (1, 5, 6) and torch.isfinite(Y).all()
    R, maps = enc.relprop(torch.randn(1, 5, 6), return_att_relevance=True, alpha=1.0)
    assert R.shape == (1, 5, 6) and torch.isfinite(R).all()
    assert len(maps) == n_layers and all(m.shape == (1, 2, 5, 5) for m in maps)


def test_multihead_attention_equals_softmax_attention():
    torch.manual_seed(0)
    att = rp.MultiheadSelfAttention(4, att_dim=4, n_heads=1)
    X = torch.randn(1, 3, 4)
    q, k, v = (X @ att.qkv_nn.weight.T).chunk(3, dim=-1)
    expected = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v
    assert torch.allclose(att(X), expected, atol=1e-6)
    R_in, R_S = att.relprop(torch.ones(1, 3, 4), return_att_relevance=True)
    assert R_in.shape == (1, 3, 4) and R_S.shape == (1, 1, 3, 3)


def test_trunc_normal_stays_in_bounds():
    t = rp.trunc_normal_(torch.empty(1000), std=1.0, a=-0.5, b=0.5)
    assert float(t.min()) >= -0.5 and float(t.max()) <= 0.5
