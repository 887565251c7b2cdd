import math

import pytest
import torch

from milsdk.nn.attention import MultiheadCrossAttention

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


def test_shapes_and_weights():
    att = MultiheadCrossAttention(6, out_dim=3, att_dim=8, n_heads=2).eval()
    x, y = torch.randn(2, 1, 6), torch.randn(2, 9, 6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    z, w = att(x, y, mask, return_att=True)
    assert z.shape == (2, 1, 3) and w.shape == (2, 2, 1, 9)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 1), atol=1e-6)
    assert torch.equal(w[1, :, :, 4:], torch.zeros(2, 1, 5))
    assert torch.allclose(att(x, y, mask), z, atol=1e-6)


def test_hand_computed_one_query_without_learned_weights():
    x = torch.tensor([[[1.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    att = MultiheadCrossAttention(2, n_heads=1, learn_weights=False)
    mask = torch.tensor([[True, True, False]])
    w = [math.exp(1 / math.sqrt(2)), 1.0]
    expected = (w[0] * y[0, 0] + w[1] * y[0, 1]) / sum(w)
    assert torch.allclose(att(x, y, mask)[0, 0], expected, atol=1e-6)


def test_padding_of_the_keys_never_changes_outputs_and_empty_bag_is_zero():
    torch.manual_seed(0)
    att = MultiheadCrossAttention(4, att_dim=4, n_heads=2).eval()
    x, y = torch.randn(3, 2, 4), torch.randn(3, 6, 4)
    mask = torch.zeros(3, 6, dtype=torch.uint8)
    mask[0, :6] = 1
    mask[1, :2] = 1
    y[1, 2:] = 1e4
    z = att(x, y, mask)
    assert torch.allclose(z[1], att(x[1:2], y[1:2, :2])[0], atol=1e-6)
    assert torch.isfinite(z).all()
    # a bag with no real token: attention output 0, then only the output projection's bias
    assert torch.allclose(
        z[2],
        att.out_proj(torch.zeros(2, 4))
        if not isinstance(att.out_proj, torch.nn.Identity)
        else torch.zeros(2, 4),
    )


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager():
    torch.manual_seed(0)
    att = MultiheadCrossAttention(4, att_dim=8, n_heads=2).eval()
    scripted = torch.jit.script(att)
    x, y = torch.randn(2, 1, 4), torch.randn(2, 5, 4)
    assert torch.allclose(scripted(x, y), att(x, y), atol=1e-6)
