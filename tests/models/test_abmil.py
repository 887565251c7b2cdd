import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import ABMIL, MILModelWrapper


@pytest.fixture
def bags():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, 16, generator=gen) for n in (3, 9, 1)]


def _batch(bags):
    n = max(b.shape[0] for b in bags)
    X = torch.zeros(len(bags), n, bags[0].shape[1])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return X, mask


@pytest.mark.parametrize("n_classes", [1, 3])
@pytest.mark.parametrize("gated", [False, True])
def test_padded_bag_gives_same_logit_and_attention_as_alone(bags, n_classes, gated):
    torch.manual_seed(1)
    model = ABMIL(in_shape=(16,), att_dim=8, gated=gated, n_classes=n_classes).eval()
    X, mask = _batch(bags)
    X[~mask] = 123.0  # padding content must not matter
    logits, att = model(X, mask, return_att=True)
    for i, bag in enumerate(bags):
        alone_logits, alone_att = model(bag.unsqueeze(0), return_att=True)
        assert torch.allclose(logits[i], alone_logits[0], atol=1e-6)
        n = bag.shape[0]
        assert torch.allclose(att[i, :n], alone_att[0], atol=1e-6)
        s = model.deployment_attention(att, mask)
        assert torch.allclose(s[i].sum(), torch.tensor(1.0)) and torch.all(s[i, n:] == 0)


def test_output_shapes_binary_and_multiclass():
    X = torch.randn(4, 6, 5)
    assert ABMIL(in_shape=(5,))(X).shape == (4,)
    assert ABMIL(in_shape=(5,), n_classes=3)(X).shape == (4, 3)
    assert isinstance(ABMIL(in_shape=(5,), n_classes=3).criterion, torch.nn.CrossEntropyLoss)


def test_compute_loss_key_and_value_binary():
    model = ABMIL(in_shape=(5,), criterion=torch.nn.BCEWithLogitsLoss())
    X, Y = torch.randn(2, 3, 5), torch.tensor([1, 0])
    logits, losses = model.compute_loss(Y, X)
    assert list(losses) == ["BCEWithLogitsLoss"]
    assert torch.allclose(losses["BCEWithLogitsLoss"], torch.nn.functional.binary_cross_entropy_with_logits(logits, Y.float()))


def test_multiclass_training_reduces_loss():
    torch.manual_seed(0)
    model = ABMIL(in_shape=(4,), att_dim=8, n_classes=3)
    Y = torch.tensor([0, 1, 2] * 4)
    X = torch.randn(12, 5, 4)
    X[torch.arange(12), 0, Y] += 4.0  # the class is written in one instance
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(40):
        _, losses = model.compute_loss(Y, X)
        opt.zero_grad()
        losses["CrossEntropyLoss"].backward()
        opt.step()
        first = first if first is not None else losses["CrossEntropyLoss"].item()
    assert losses["CrossEntropyLoss"].item() < 0.5 * first


def test_predict_returns_instance_scores_and_is_deterministic_in_eval():
    model = ABMIL(in_shape=(5,)).eval()
    X = torch.randn(2, 4, 5)
    a = model.predict(X)
    b = model.predict(X)
    assert a[1].shape == (2, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert model.predict(X, return_inst_pred=False).shape == (2,)


def test_lazy_model_records_in_shape_after_first_forward():
    model = ABMIL()
    assert model.in_shape is None
    model(torch.randn(1, 3, 11))
    assert model.in_shape == (11,) and model.config["in_shape"] == (11,)


def test_bad_config_is_one_clear_error():
    with pytest.raises(ModelConfigError, match="needs n_classes >= 2"):
        ABMIL(in_shape=(4,), criterion=torch.nn.CrossEntropyLoss())


def test_wrapper_rejects_wrong_feature_dim_naming_key():
    wrapper = MILModelWrapper(ABMIL(in_shape=(8,)))
    with pytest.raises(ValueError, match=r"bag key 'X' has instance shape \(5,\), model ABMIL expects in_shape \(8,\)"):
        wrapper({"X": torch.randn(1, 3, 5), "mask": torch.ones(1, 3)})
