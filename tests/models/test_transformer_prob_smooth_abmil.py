"""What is special to TransformerProbSmoothABMIL (the contract suite checks the rest): in_shape is required,
the loss keys, the sample counts, the graph entering only the loss, and predict honouring the mask."""

import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.export.signature import DeploymentModule
from milsdk.models import TransformerProbSmoothABMIL, create_model
from milsdk.nn.adjacency import edge_list_from_adj


def _bags():
    torch.manual_seed(0)
    X = torch.randn(2, 6, 8)
    X[0, 4:] = 25.0
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.uint8)
    A = torch.zeros(2, 6, 6)
    for i in range(5):
        A[:, i, i + 1] = A[:, i + 1, i] = 0.5
    return X, mask, A


def _model(**kw):
    torch.manual_seed(1)
    config = {
        "pool_att_dim": 4,
        "n_samples_train": 3,
        "n_samples_test": 5,
        "transf_att_dim": 8,
        "transf_n_heads": 2,
        **kw,
    }
    return TransformerProbSmoothABMIL(in_shape=(8,), **config)


def test_in_shape_is_required_with_a_clear_error():
    with pytest.raises(ModelConfigError, match="needs in_shape"):
        TransformerProbSmoothABMIL()
    with pytest.raises(ModelConfigError, match="must divide"):
        TransformerProbSmoothABMIL(in_shape=(8,), transf_att_dim=10, transf_n_heads=4)
    with pytest.raises(ModelConfigError, match="covar_mode"):
        _model(covar_mode="full")


@pytest.mark.parametrize("n_classes,crit", [(1, "BCEWithLogitsLoss"), (3, "CrossEntropyLoss")])
def test_loss_keys_and_the_mean_logits(n_classes, crit):
    X, mask, adj = _bags()
    model = _model(n_classes=n_classes).train()
    Y = torch.tensor([0, 1])
    torch.manual_seed(3)
    logits, losses = model.compute_loss(Y, X, adj, mask)
    torch.manual_seed(3)
    samples, kl = model(X, mask, adj, return_samples=True, return_kl_div=True)
    assert set(losses) == {crit, "KLDiv"} and torch.allclose(losses["KLDiv"], kl)
    assert samples.shape[:2] == (2, 3) and torch.allclose(logits, samples.mean(1))


def test_sample_counts():
    X, mask, _ = _bags()
    model = _model()
    assert model.train()(X, mask, return_samples=True).shape == (2, 3)
    assert model.eval()(X, mask, return_samples=True).shape == (2, 1)
    logits, att = model.predict(X, mask, return_samples=True)
    assert logits.shape == (2, 5) and att.shape == (2, 6, 5)
    zero = _model(covar_mode="zero").train()
    assert zero(X, mask, return_samples=True).shape == (2, 1)


def test_predict_honours_the_mask_and_eval_is_the_mean():
    X, mask, _ = _bags()
    model = _model().eval()
    logits, att = model.predict(X, mask)
    alone_logits, alone_att = model.predict(X[:1, :4])
    assert torch.allclose(logits[0], alone_logits[0], atol=1e-5)
    assert torch.allclose(att[0, :4], alone_att[0], atol=1e-5)
    assert torch.equal(model.predict(X, mask)[1], att)


def test_the_graph_enters_the_loss_only_and_both_forms_agree():
    X, mask, adj = _bags()
    model = _model().eval()
    edge_index, edge_weight = edge_list_from_adj(adj)
    Y = torch.tensor([1, 0])
    with torch.no_grad():
        dense_logits, dense = model.compute_loss(Y, X, adj, mask)
        edge_logits, edges = model.compute_loss(
            Y, X, mask=mask, edge_index=edge_index, edge_weight=edge_weight
        )
        assert torch.equal(dense_logits, model(X, mask))
    assert torch.allclose(dense_logits, edge_logits) and abs(float(dense["KLDiv"] - edges["KLDiv"])) <= 1e-6
    assert DeploymentModule(model).input_names == ["features", "mask"]


def test_deeper_encoder_with_any_width_and_torchscript():
    X, mask, _ = _bags()
    model = _model(transf_n_layers=2).eval()
    scripted = torch.jit.script(model)
    for a, b in zip(scripted(X, mask, return_att=True), model(X, mask, return_att=True)):
        assert torch.allclose(a, b, atol=1e-5)
    wide = create_model("TransformerProbSmoothABMIL", in_shape=(8,), transf_att_dim=8, n_classes=3)
    assert wide(X).shape == (2, 3)
