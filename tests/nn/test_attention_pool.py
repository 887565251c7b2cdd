import pytest
import torch

from milsdk.nn import AttentionPool


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("gated", [False, True])
def test_shapes_and_attention_logits(act, gated):
    pool = AttentionPool(in_dim=4, att_dim=8, act=act, gated=gated)
    z, f = pool(torch.randn(2, 5, 4), return_att=True)
    assert z.shape == (2, 4) and f.shape == (2, 5)


def test_hand_computed_case_three_instances_two_features():
    pool = AttentionPool(in_dim=2, att_dim=1, act="relu")
    with torch.no_grad():
        pool.fc1.weight.copy_(torch.tensor([[1.0, 0.0]]))
        pool.fc1.bias.zero_()
        pool.fc2.weight.copy_(torch.tensor([[1.0]]))
    X = torch.tensor([[[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]])
    z, f = pool(X, return_att=True)
    assert torch.allclose(f, torch.tensor([[0.0, 1.0, 2.0]]))
    s = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert torch.allclose(z, (s.unsqueeze(1) * X[0]).sum(0, keepdim=True), atol=1e-6)


def test_padding_never_changes_the_pooled_vector():
    torch.manual_seed(0)
    pool = AttentionPool(in_dim=6, att_dim=5, gated=True)
    X = torch.randn(1, 4, 6)
    padded = torch.cat([X, torch.randn(1, 9, 6) * 50], dim=1)
    mask = torch.zeros(1, 13, dtype=torch.uint8)
    mask[:, :4] = 1
    assert torch.allclose(pool(X), pool(padded, mask), atol=1e-6)


def test_lazy_in_dim_and_bad_activation():
    pool = AttentionPool(in_dim=None, att_dim=3)
    assert pool(torch.randn(2, 3, 7)).shape == (2, 7)
    with pytest.raises(ValueError, match="act must be"):
        AttentionPool(in_dim=2, act="softplus")


def test_survives_torchscript():
    pool = AttentionPool(in_dim=3, att_dim=4).eval()
    X, mask = torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool)
    scripted = torch.jit.trace(pool, (X, mask))
    assert torch.allclose(scripted(X, mask), pool(X, mask))
