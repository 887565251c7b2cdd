"""What is special to ProbSmoothABMIL / SmoothABMIL (the contract suite checks the rest): the loss keys, the
criterion on every attention sample, the sample counts, the graph entering only the loss, and predict
honouring the mask."""

import warnings

import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.export.signature import DeploymentModule
from milsdk.models import MILModelWrapper, ProbSmoothABMIL, SmoothABMIL, create_model
from milsdk.nn.adjacency import edge_list_from_adj


def _bags():
    """Two bags (5 and 3 instances, padding full of garbage), their mask and a normalised grid-like graph."""
    torch.manual_seed(0)
    X = torch.randn(2, 5, 6)
    X[1, 3:] = 40.0
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    A = torch.zeros(2, 5, 5)
    for i in range(4):
        A[:, i, i + 1] = A[:, i + 1, i] = 1.0
    A = A + torch.eye(5)
    d = A.sum(-1).rsqrt()
    return X, mask, d.unsqueeze(-1) * A * d.unsqueeze(-2)


def _model(cls=ProbSmoothABMIL, **kw):
    torch.manual_seed(1)
    if cls is ProbSmoothABMIL:
        kw = {"n_samples_train": 4, "n_samples_test": 6, **kw}
    return cls(in_shape=(6,), att_dim=8, **kw)


@pytest.mark.parametrize(
    "cls,n_classes,keys",
    [
        (ProbSmoothABMIL, 1, {"BCEWithLogitsLoss", "KLDiv"}),
        (ProbSmoothABMIL, 3, {"CrossEntropyLoss", "KLDiv"}),
        (SmoothABMIL, 1, {"BCEWithLogitsLoss", "DirEnergy"}),
        (SmoothABMIL, 3, {"CrossEntropyLoss", "DirEnergy"}),
    ],
)
def test_loss_keys(cls, n_classes, keys):
    X, mask, adj = _bags()
    logits, losses = _model(cls, n_classes=n_classes).compute_loss(torch.tensor([0, 1]), X, adj, mask)
    assert set(losses) == keys and all(torch.isfinite(v) for v in losses.values())
    assert logits.shape == ((2,) if n_classes == 1 else (2, n_classes))


@pytest.mark.parametrize("n_classes", [1, 3])
def test_the_criterion_sees_every_attention_sample_and_the_logits_are_their_mean(n_classes):
    X, mask, adj = _bags()
    model = _model(n_classes=n_classes).train()
    Y = torch.tensor([1, 0])
    torch.manual_seed(7)
    logits, losses = model.compute_loss(Y, X, adj, mask)
    torch.manual_seed(7)
    samples, kl = model(X, mask, adj, return_samples=True, return_kl_div=True)
    assert samples.shape[:2] == (2, 4)
    if n_classes == 1:
        target = Y[:, None].float().expand(2, 4)
        expected = torch.nn.functional.binary_cross_entropy_with_logits(samples, target)
    else:
        expected = torch.nn.functional.cross_entropy(samples.reshape(8, 3), Y.repeat_interleave(4))
    name = "BCEWithLogitsLoss" if n_classes == 1 else "CrossEntropyLoss"
    assert torch.allclose(losses[name], expected) and torch.allclose(losses["KLDiv"], kl)
    assert torch.allclose(logits, samples.mean(1))


def test_sample_counts_in_training_eval_and_predict():
    X, mask, _ = _bags()
    model = _model()
    model.train()
    logits, att = model(X, mask, return_att=True, return_samples=True)
    assert logits.shape == (2, 4) and att.shape == (2, 5, 4)
    model.eval()
    logits, att = model(X, mask, return_att=True, return_samples=True)
    assert logits.shape == (2, 1) and att.shape == (2, 5, 1)  # eval: the mean, one "sample"
    logits, att = model.predict(X, mask, return_samples=True)
    assert logits.shape == (2, 6) and att.shape == (2, 5, 6)  # predictive distribution: n_samples_test
    assert model.predict(X, mask, return_inst_pred=False).shape == (2,)
    smooth = _model(SmoothABMIL).train()
    assert smooth(X, mask, return_samples=True).shape == (2, 1)
    assert smooth.eval().predict(X, mask, return_samples=True)[0].shape == (2, 1)


def test_eval_attention_is_the_mean_logit():
    X, mask, _ = _bags()
    model = _model().eval()
    _, att = model(X, mask, return_att=True)
    mu, _ = model.pool.attention_distribution(model.feat_ext(X))
    assert torch.equal(att, mu.squeeze(-1))


@pytest.mark.parametrize("cls", [ProbSmoothABMIL, SmoothABMIL])
def test_predict_honours_the_mask(cls):
    X, mask, _ = _bags()
    model = _model(cls).eval()
    logits, att = model.predict(X, mask)
    alone_logits, alone_att = model.predict(X[1:, :3])
    assert torch.allclose(logits[1], alone_logits[0], atol=1e-5)
    assert torch.allclose(att[1, :3], alone_att[0], atol=1e-5)
    assert not torch.allclose(model.predict(X)[0][1], alone_logits[0], atol=1e-3)  # the garbage matters


def test_the_reference_argument_order_is_refused_not_misread():
    X, mask, adj = _bags()
    model = _model()
    with pytest.raises(ValueError, match="mask must be"):
        model(X, adj, mask)


def test_dense_sparse_and_edge_list_graphs_give_the_same_loss_after_training():
    X, mask, adj = _bags()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    Y = torch.tensor([1, 0])
    for _ in range(5):
        opt.zero_grad()
        sum(model.compute_loss(Y, X, adj, mask)[1].values()).backward()
        opt.step()
    model.eval()
    edge_index, edge_weight = edge_list_from_adj(adj)
    with torch.no_grad():
        dense = model.compute_loss(Y, X, adj, mask)
        sparse = model.compute_loss(Y, X, adj.to_sparse(), mask)
        edges = model.compute_loss(Y, X, mask=mask, edge_index=edge_index, edge_weight=edge_weight)
    for other in (sparse, edges):
        assert torch.allclose(dense[0], other[0], atol=1e-6)
        assert all(abs(float(dense[1][k] - other[1][k])) <= 1e-5 for k in dense[1])


def test_the_trainer_routes_adj_by_name_and_a_missing_graph_warns():
    X, mask, adj = _bags()
    wrapper = MILModelWrapper(_model())
    bag = {"X": X, "Y": torch.tensor([1, 0]), "mask": mask, "adj": adj}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, with_graph = wrapper.compute_loss(bag)
    no_adj = {k: v for k, v in bag.items() if k != "adj"}
    with pytest.warns(UserWarning, match="no graph"):
        _, without = wrapper.compute_loss(no_adj)
    assert float(with_graph["KLDiv"].detach()) != pytest.approx(float(without["KLDiv"].detach()))


def test_deployment_needs_features_and_mask_only():
    model = _model()
    assert model.extra_inputs == ()
    assert DeploymentModule(model).input_names == ["features", "mask"]


def test_torchscript_matches_eager_with_and_without_the_loss_term():
    X, mask, adj = _bags()
    model = _model().eval()
    scripted = torch.jit.script(model)
    edge_index, edge_weight = edge_list_from_adj(adj)
    for a, b in zip(scripted(X, mask, return_att=True), model(X, mask, return_att=True)):
        assert torch.allclose(a, b, atol=1e-6)
    kl = scripted(X, mask, return_kl_div=True, edge_index=edge_index, edge_weight=edge_weight)[1]
    assert torch.allclose(kl, model(X, mask, adj, return_kl_div=True)[1], atol=1e-6)


def test_configuration():
    with pytest.raises(ModelConfigError, match="covar_mode"):
        ProbSmoothABMIL(in_shape=(3,), covar_mode="full")
    lazy = create_model("ProbSmoothABMIL", att_dim=4, n_samples_train=2)
    assert lazy(torch.randn(2, 3, 5)).shape == (2,) and lazy.in_shape == (5,)
    smooth = create_model("SmoothABMIL", in_shape=(4,), att_dim=4)
    assert smooth.pool.covar_mode == "zero" and smooth.config == {
        "in_shape": (4,),
        "att_dim": 4,
        "feat_ext": None,
        "criterion": None,
        "n_classes": 1,
    }
