"""CAMILAttentionPool: shapes, a hand case (scores from T, pooling M), masking, AttentionPool is the case M = T,
TorchScript. (Equality with torchmil's block: tests/compat/test_torchmil_parity.py.)"""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.attention import AttentionPool, CAMILAttentionPool

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


@pytest.mark.parametrize("gated", [False, True])
def test_shapes(gated):
    pool = CAMILAttentionPool(4, att_dim=8, gated=gated)
    z, f = pool(torch.randn(2, 5, 4), torch.randn(2, 5, 3), return_att=True)
    assert z.shape == (2, 3) and f.shape == (2, 5)
    assert pool(torch.randn(2, 5, 4), torch.randn(2, 5, 4)).shape == (2, 4)


def test_hand_case_scores_from_T_pool_M():
    # fc1 = identity on feature 0, no bias; fc2 = 1: f_i = tanh(t_i0).
    pool = CAMILAttentionPool(2, att_dim=1)
    with torch.no_grad():
        pool.fc1.weight.copy_(torch.tensor([[1.0, 0.0]]))
        pool.fc1.bias.zero_()
        pool.fc2.weight.copy_(torch.tensor([[1.0]]))
    T = torch.tensor([[[0.0, 5.0], [1.0, -5.0], [2.0, 0.0]]])
    M = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    z, f = pool(T, M, return_att=True)
    expected_f = torch.tanh(torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(f[0], expected_f, atol=1e-6, rtol=0)
    s = torch.softmax(expected_f, 0)
    torch.testing.assert_close(z[0], torch.stack([s[0] + s[2], s[1] + s[2]]), atol=1e-6, rtol=0)


def test_padding_never_changes_the_pooled_vector():
    torch.manual_seed(0)
    pool = CAMILAttentionPool(6, att_dim=5, gated=True)
    T, M = torch.randn(1, 4, 6), torch.randn(1, 4, 3)
    T_pad = torch.cat([T, torch.randn(1, 9, 6) * 50], dim=1)
    M_pad = torch.cat([M, torch.randn(1, 9, 3) * 50], dim=1)
    mask = torch.zeros(1, 13, dtype=torch.uint8)
    mask[:, :4] = 1
    torch.testing.assert_close(pool(T_pad, M_pad, mask), pool(T, M), atol=1e-6, rtol=0)


def test_attention_pool_is_the_case_m_equals_t():
    torch.manual_seed(0)
    pool = CAMILAttentionPool(4, att_dim=3, gated=True)
    plain = AttentionPool(4, att_dim=3, act="tanh", gated=True)
    plain.load_state_dict(pool.state_dict())
    X, mask = torch.randn(2, 6, 4), torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    z, f = pool(X, X, mask, return_att=True)
    z_plain, f_plain = plain(X, mask, return_att=True)
    torch.testing.assert_close(z, z_plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(f, f_plain, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_scripts_and_matches_eager():
    pool = CAMILAttentionPool(3, att_dim=4, gated=True).eval()
    T, M, mask = torch.randn(2, 5, 3), torch.randn(2, 5, 2), torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    scripted = torch.jit.script(pool)
    got, want = scripted(T, M, mask, return_att=True), pool(T, M, mask, return_att=True)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
