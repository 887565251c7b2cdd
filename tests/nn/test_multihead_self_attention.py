import math

import pytest
import torch

from milsdk.nn.attention import MultiheadSelfAttention

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def _batch(lengths, n_max, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(len(lengths), n_max, dim, generator=g)
    mask = torch.zeros(len(lengths), n_max, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return X, mask


def test_shapes_and_out_projection():
    att = MultiheadSelfAttention(6, out_dim=5, att_dim=8, n_heads=2)
    X, mask = _batch([4, 2], 4, 6)
    y, a = att(X, mask, return_att=True)
    assert y.shape == (2, 4, 5) and a.shape == (2, 2, 4, 4)
    assert isinstance(att.out_proj, torch.nn.Linear)
    assert isinstance(MultiheadSelfAttention(6, att_dim=6, n_heads=2).out_proj, torch.nn.Identity)
    with pytest.raises(ValueError, match="must divide"):
        MultiheadSelfAttention(6, att_dim=8, n_heads=3)


def test_hand_computed_three_tokens_without_learned_weights():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    att = MultiheadSelfAttention(2, n_heads=1, learn_weights=False)
    y = att(x)
    for i in range(3):
        w = [math.exp(float(x[0, i] @ x[0, j]) / math.sqrt(2)) for j in range(3)]
        expected = sum(w[j] * x[0, j] for j in range(3)) / sum(w)
        assert torch.allclose(y[0, i], expected, atol=1e-6)


def test_padding_never_changes_real_outputs():
    torch.manual_seed(0)
    att = MultiheadSelfAttention(6, att_dim=8, n_heads=2).eval()
    X, mask = _batch([5, 3], 5, 6)
    X[1, 3:] = 1e3  # garbage in the padding
    y = att(X, mask.to(torch.uint8))
    alone = att(X[1:, :3])
    assert torch.allclose(y[1, :3], alone[0], atol=1e-6)


def test_attention_map_under_a_mask_is_finite_and_normalised():
    # reference defect 8.2: return_att with a mask gave NaN
    torch.manual_seed(0)
    att = MultiheadSelfAttention(6, att_dim=8, n_heads=2).eval()
    X, mask = _batch([5, 3, 0], 5, 6)
    y, a = att(X, mask, return_att=True)
    assert torch.isfinite(a).all() and torch.isfinite(y).all()
    assert torch.allclose(a[1, :, :3].sum(-1), torch.ones(2, 3), atol=1e-6)
    assert torch.equal(a[1, :, :, 3:], torch.zeros(2, 5, 2))  # masked keys
    assert torch.equal(a[1, :, 3:], torch.zeros(2, 2, 5))  # padded query rows
    assert torch.equal(a[2], torch.zeros_like(a[2]))  # bag without real tokens
    # the explicit path and the memory-efficient path agree
    assert torch.allclose(att(X, mask), y, atol=1e-6)


def test_first_queries_only_equal_the_full_rows():
    torch.manual_seed(0)
    att = MultiheadSelfAttention(6, att_dim=8, n_heads=2).eval()
    X, mask = _batch([5, 3], 5, 6)
    y_full, a_full = att.attend(X, mask, True)
    y1, a1 = att.attend(X, mask, True, 1)
    assert y1.shape == (2, 1, 6) and a1.shape == (2, 2, 1, 5)
    assert torch.allclose(y1, y_full[:, :1], atol=1e-6) and torch.allclose(a1, a_full[:, :, :1], atol=1e-6)
    assert torch.allclose(att.attend(X, mask, False, 1)[0], y1, atol=1e-6)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager():
    torch.manual_seed(0)
    att = MultiheadSelfAttention(6, att_dim=8, n_heads=2).eval()
    scripted = torch.jit.script(att)
    X, mask = _batch([7, 2], 7, 6)
    assert torch.allclose(scripted(X, mask), att(X, mask), atol=1e-6)
