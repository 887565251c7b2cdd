import math

import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import DSMIL, create_model


def _batch(bags, pad_value=0.0):
    n = max(b.shape[0] for b in bags)
    X = torch.full((len(bags), n, bags[0].shape[1]), pad_value)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return X, mask


def _by_hand(model, bag):
    """DSMIL on one bag of real instances only, written from the paper's equations (no mask, no batch)."""
    inst = model.inst_classifier(bag)  # (n, C)
    crit = inst.argmax(dim=0)  # (C,)
    Q, V = model.q_nn(bag), model.v_nn(bag)
    A = torch.softmax(Q @ Q[crit].T / math.sqrt(Q.shape[1]), dim=0)  # (n, C)
    C = model.n_classes
    fcc = torch.nn.Conv1d(C, C, kernel_size=bag.shape[1])  # the paper's bag classifier
    fcc.weight.data = model.bag_classifier.weight.reshape(fcc.weight.shape)
    fcc.bias.data = model.bag_classifier.bias
    bag_logits = fcc((A.T @ V).unsqueeze(0)).reshape(-1)  # (C,)
    return bag_logits, inst.max(dim=0).values, A, inst


@pytest.mark.parametrize("n_classes", [1, 3])
def test_matches_paper_equations_and_ignores_padding_that_would_be_critical(n_classes):
    torch.manual_seed(0)
    model = DSMIL(in_shape=(5,), att_dim=8, n_classes=n_classes).eval()
    with torch.no_grad():
        model.inst_classifier.weight.fill_(1.0)  # padding of 50s would win every class's argmax and max
        bags = [torch.randn(n, 5) for n in (6, 1, 3)]
        X, mask = _batch(bags, pad_value=50.0)
        logits, att = model(X, mask, return_att=True)
        _, inst = model(X, mask, return_inst_pred=True)
        for i, bag in enumerate(bags):
            bag_logits, max_logits, A, inst_ref = _by_hand(model, bag)
            want = 0.5 * (bag_logits + max_logits)
            n = bag.shape[0]
            assert torch.allclose(logits[i], want.squeeze(), atol=1e-5)
            assert torch.allclose(att[i, :n], A.mean(dim=1), atol=1e-6) and (att[i, n:] == 0).all()
            assert torch.allclose(inst[i, :n], inst_ref.squeeze(-1), atol=1e-6)
        assert torch.allclose(att.sum(dim=1), torch.ones(3), atol=1e-6)


def test_compute_loss_has_one_term_per_stream_and_returns_forward_logits():
    torch.manual_seed(0)
    model = DSMIL(in_shape=(4,), att_dim=8)
    X, mask = _batch([torch.randn(5, 4), torch.randn(2, 4)], pad_value=9.0)
    Y = torch.tensor([1, 0])
    logits, losses = model.compute_loss(Y, X, mask.to(torch.uint8))
    assert sorted(losses) == ["BCEWithLogitsLoss", "BCEWithLogitsLoss_max"]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    refs = [_by_hand(model, X[i, : int(mask[i].sum())]) for i in range(2)]
    bag_stream = torch.stack([r[0][0] for r in refs])
    max_stream = torch.stack([r[1][0] for r in refs])
    assert torch.allclose(losses["BCEWithLogitsLoss"], bce(bag_stream, Y.float()), atol=1e-5)
    assert torch.allclose(losses["BCEWithLogitsLoss_max"], bce(max_stream, Y.float()), atol=1e-6)
    assert torch.allclose(logits, model(X, mask), atol=1e-6)
    sum(losses.values()).backward()
    assert model.bag_classifier.weight.grad.abs().sum() > 0
    assert model.inst_classifier.weight.grad.abs().sum() > 0


def test_multiclass_loss_keys_and_predict_returns_instance_logits():
    model = DSMIL(in_shape=(4,), att_dim=8, n_classes=3)
    X = torch.randn(2, 6, 4)
    _, losses = model.compute_loss(torch.tensor([0, 2]), X)
    assert sorted(losses) == ["CrossEntropyLoss", "CrossEntropyLoss_max"]
    logits, inst = model.predict(X)
    assert logits.shape == (2, 3) and inst.shape == (2, 6, 3)
    assert DSMIL(in_shape=(4,)).predict(X)[1].shape == (2, 6)


def test_empty_bag_and_one_instance_bag_are_finite():
    model = DSMIL(in_shape=(4,), att_dim=8, n_classes=3).eval()
    X = torch.randn(2, 3, 4)
    mask = torch.tensor([[False, False, False], [True, False, False]])
    logits, att = model(X, mask, return_att=True)
    assert torch.isfinite(logits).all() and torch.isfinite(att).all()
    assert (att[0] == 0).all() and torch.allclose(att[1], torch.tensor([1.0, 0.0, 0.0]))


def test_reference_defaults_lazy_in_shape_and_clear_errors():
    model = create_model("DSMIL")
    cfg = model.config
    assert cfg["att_dim"] == 128 and not cfg["nonlinear_q"] and cfg["n_classes"] == 1
    assert model(torch.randn(2, 3, 7)).shape == (2,) and model.in_shape == (7,)
    assert DSMIL(nonlinear_q=True)(torch.randn(1, 2, 5)).shape == (1,)
    with pytest.raises(ModelConfigError, match="nonlinear_v=True"):
        DSMIL(nonlinear_v=True)
    with pytest.raises(ValueError, match="cannot both be set"):
        DSMIL(in_shape=(3,))(torch.randn(1, 2, 3), return_att=True, return_inst_pred=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_dropout_is_off_in_eval_and_forward_is_scriptable():
    model = DSMIL(in_shape=(6,), att_dim=8, nonlinear_q=True, nonlinear_v=True, dropout=0.5).eval()
    X = torch.randn(2, 5, 6)
    assert torch.equal(model(X), model(X))
    scripted = torch.jit.script(model)
    out, att = scripted(X, torch.ones(2, 5, dtype=torch.bool), return_att=True)
    assert torch.allclose(out, model(X), atol=1e-6) and att.shape == (2, 5)
