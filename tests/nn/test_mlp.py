import pytest
import torch

from milsdk.nn import MLP, LazyLinear, get_feat_dim


def test_mlp_shapes_and_activation_applied():
    mlp = MLP(input_size=4, linear_sizes=[3, 2], activations=["relu", "none"])
    assert mlp(torch.randn(2, 5, 4)).shape == (2, 5, 2)
    relu_only = MLP(input_size=2, linear_sizes=[2], activations=["relu"])
    with torch.no_grad():
        relu_only.mlp[0].weight.copy_(-torch.eye(2))
        relu_only.mlp[0].bias.zero_()
    assert torch.equal(relu_only(torch.tensor([[1.0, -1.0]])), torch.tensor([[0.0, 1.0]]))


def test_mlp_mismatched_lists_rejected():
    with pytest.raises(ValueError, match="one per layer"):
        MLP(4, [3, 2], ["relu"])


def test_lazy_linear_and_feat_dim():
    assert isinstance(LazyLinear(None, 3), torch.nn.LazyLinear)
    assert LazyLinear(4, 3).weight.shape == (3, 4)
    assert get_feat_dim(torch.nn.Identity(), (7,)) == 7
    assert get_feat_dim(torch.nn.Linear(7, 2), (7,)) == 2
