import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import IIBMIL, create_model


def _model(**kw):
    torch.manual_seed(0)
    return IIBMIL(in_shape=(6,), att_dim=8, n_heads=2, **kw).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2, 15, 6, generator=g)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[1, 9:] = False
    return X, mask


def test_in_shape_none_gives_a_clear_error():
    with pytest.raises(ModelConfigError, match="needs in_shape"):
        create_model("IIBMIL")


def test_class_token_path_equals_the_full_decoder():
    model = _model(n_layers_decoder=2)
    X, mask = _batch()
    logits, att, y_inst, X_enc = model.forward_all(X, mask)
    assert y_inst.shape == (2, 15) and X_enc.shape == (2, 15, 8)
    # the reference's computation: the whole decoder over [cls; X_enc], class token read out
    Z = torch.cat([model.cls_token.expand(2, 1, 8), X_enc], dim=1)
    Z_mask = torch.cat([torch.ones(2, 1, dtype=torch.bool), mask], dim=1)
    full, weights = model.decoder(Z, Z_mask, return_att=True)
    assert torch.allclose(logits, model.bag_classifier(full[:, 0]).squeeze(-1), atol=1e-5)
    assert torch.allclose(att, weights[-1][:, :, 0, 1:].mean(1), atol=1e-6)
    assert torch.equal(att[1, 9:], torch.zeros(6)) and (att[:, :9] > 0).all()


def test_update_prototypes_is_the_sequential_momentum_update_over_real_instances():
    model = _model()
    X, mask = _batch()
    model.prototypes.copy_(torch.randn(2, 8))
    before = model.prototypes.clone()
    _, _, y_inst, X_enc = model.forward_all(X, mask)
    emb, scores = X_enc[mask], y_inst[mask]
    k = emb.shape[0] // 10  # 24 real instances -> 2
    expected = before.clone()
    for row, order in ((0, scores.argsort(descending=True)), (1, scores.argsort())):
        for i in order[:k]:
            expected[row] = 0.9 * expected[row] + 0.1 * emb[i]
    X_noise = X.clone()
    X_noise[1, 9:] = 1e3  # padding must not reach the prototypes
    model.update_prototypes(X_noise, mask, proto_m=0.9)
    assert torch.allclose(model.prototypes, expected, atol=1e-5)


def test_instance_loss_targets_follow_the_positive_prototype():
    model = _model()
    X, mask = _batch()
    _, _, _, X_enc = model.forward_all(X, mask)
    # zero prototypes (before any update): every target is negative, as the reference starts
    assert torch.equal(model._pseudo_labels(X_enc[mask]), torch.zeros(int(mask.sum())))
    model.prototypes.copy_(torch.stack([X_enc[0, 0], -X_enc[0, 0]]).detach())
    assert model._pseudo_labels(X_enc[0, :1]).item() == 1.0  # near the positive prototype (row 0)
    _, losses = model.compute_loss(torch.tensor([0.0, 1.0]), X, mask.to(torch.uint8))
    assert set(losses) == {"BCEWithLogitsLoss", "InstLoss"}
    assert all(torch.isfinite(v) for v in losses.values())
    _, empty = model.compute_loss(torch.tensor([0.0]), X[:1], torch.zeros(1, 15, dtype=torch.bool))
    assert empty["InstLoss"].item() == 0.0


def test_multiclass_prototypes_and_loss():
    model = _model(n_classes=3)
    X, mask = _batch()
    assert model.prototypes.shape == (3, 8)
    model.update_prototypes(X, mask)
    logits, losses = model.compute_loss(torch.tensor([0, 2]), X, mask)
    assert logits.shape == (2, 3) and set(losses) == {"CrossEntropyLoss", "InstLoss"}
