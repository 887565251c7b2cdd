import json

import onnx
import pytest
import torch

from milsdk.errors import CheckpointError, ModelConfigError
from milsdk.export.onnx import export_onnx
from milsdk.export.torchscript import read_torchscript_info, export_torchscript
from milsdk.models import VAEABMIL, create_model
from milsdk.nn import VariationalAutoEncoderMIL
from milsdk.utils.checkpoint import load_checkpoint, save_checkpoint


def _padded(bags, fill=0.0):
    n = max(len(b) for b in bags)
    X = torch.full((len(bags), n, bags[0].shape[1]), fill)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, : len(b)] = b
        mask[i, : len(b)] = True
    return X, mask


def test_create_model_from_plain_config_builds_the_vae_and_uses_its_latent_size():
    model = create_model(
        "VAEABMIL", in_shape=(10,), att_dim=8, vae_layer_sizes=[8, 4], vae_covar_mode="diagonal"
    )
    assert isinstance(model.feat_ext, VariationalAutoEncoderMIL)
    assert model.feat_ext.covar_mode == "diagonal" and model.feat_ext.layer_sizes == [8, 4]
    assert model.pool.fc1.in_features == 4 and model.classifier.in_features == 4
    json.dumps(model.config)  # plain data: the checkpoint stores it as is
    assert model(torch.randn(3, 5, 10)).shape == (3,)
    assert create_model("VAEABMIL", in_shape=(10,), n_classes=3)(torch.randn(2, 4, 10)).shape == (2, 3)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VAEABMIL(in_shape=(6,), att_dim=8, vae_layer_sizes=(5, 3), gated=True, n_classes=3).eval()
    path = save_checkpoint(model, tmp_path / "vae.ckpt", class_names=["a", "b", "c"])
    back = load_checkpoint(path)
    X = torch.randn(2, 7, 6)
    assert type(back) is VAEABMIL and back.config == json.loads(json.dumps(model.config))
    assert torch.equal(back(X), model(X))


def test_a_given_vae_is_used_but_cannot_be_checkpointed(tmp_path):
    vae = VariationalAutoEncoderMIL(input_shape=(6,), layer_sizes=[4, 2])
    model = VAEABMIL(vae, in_shape=(6,), att_dim=8)
    assert model.feat_ext is vae and model.pool.fc1.in_features == 2
    assert VAEABMIL(vae)(torch.randn(1, 3, 6)).shape == (1,)  # in_shape None: lazy attention and classifier
    with pytest.raises(CheckpointError, match="feat_ext"):
        save_checkpoint(model, tmp_path / "m.ckpt")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give in_shape"),
        ({"in_shape": (6,), "vae_layer_sizes": []}, "layer_sizes"),
        ({"in_shape": (6,), "vae_loss_reduction": "avg"}, "vae_loss_reduction"),
        ({"feat_ext": torch.nn.Identity(), "in_shape": (6,)}, "VariationalAutoEncoderMIL"),
        ({"feat_ext": VariationalAutoEncoderMIL(input_shape=(6,)), "in_shape": (7,)}, "differs"),
        (
            {"feat_ext": VariationalAutoEncoderMIL(input_shape=(6,)), "vae_covar_mode": "diagonal"},
            "only configure",
        ),
    ],
)
def test_bad_configurations_raise(kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        VAEABMIL(**kwargs)


@pytest.mark.parametrize("n_classes, crit", [(1, "BCEWithLogitsLoss"), (3, "CrossEntropyLoss")])
def test_loss_keys_and_masked_vae_terms(n_classes, crit):
    torch.manual_seed(0)
    model = VAEABMIL(in_shape=(4,), att_dim=8, vae_layer_sizes=(5, 3), n_classes=n_classes)
    bags = [torch.randn(n, 4) for n in (2, 5)]
    X, mask = _padded(bags, fill=1e3)
    Y = torch.tensor([0, 1])
    logits, losses = model.compute_loss(Y, X, mask, n_samples=2)
    assert set(losses) == {crit, "VaeELL", "VaeKL"} and all(v.dim() == 0 for v in losses.values())
    assert logits.shape == ((2,) if n_classes == 1 else (2, n_classes))
    assert all(torch.isfinite(v) for v in losses.values())
    # the 1e3 padding is excluded: the KL of the real instances is of order 1, not 1e6
    assert losses["VaeKL"].item() < 100
    model.vae_loss_reduction = "none"
    _, per_instance = model.compute_loss(Y, X, mask)
    assert per_instance["VaeELL"].shape == (2, 5) and torch.all(per_instance["VaeELL"][~mask] == 0)


def test_eval_is_deterministic_and_ignores_n_samples():
    torch.manual_seed(0)
    model = VAEABMIL(in_shape=(4,), att_dim=8, vae_layer_sizes=(5, 3))
    X = torch.randn(2, 6, 4)
    assert not torch.equal(model(X), model(X))  # training: sampled latents
    model.eval()
    assert torch.equal(model(X), model(X)) and torch.equal(model(X, n_samples=8), model(X))


def test_more_samples_reduce_the_training_noise():
    torch.manual_seed(0)
    model = VAEABMIL(in_shape=(4,), att_dim=8, vae_layer_sizes=(5, 3))
    X = torch.randn(1, 6, 4)
    with torch.no_grad():
        one = torch.stack([model(X, n_samples=1) for _ in range(30)])
        many = torch.stack([model(X, n_samples=64) for _ in range(30)])
    assert many.std() < 0.5 * one.std()


def test_padding_invariance_and_all_masked_row():
    torch.manual_seed(0)
    model = VAEABMIL(in_shape=(4,), att_dim=8, vae_layer_sizes=(5, 3)).eval()
    bags = [torch.randn(n, 4) for n in (1, 4, 7)]
    X, mask = _padded(bags, fill=55.0)
    for m in (mask, mask.to(torch.uint8)):
        logits, att = model(X, m, return_att=True)
        for i, bag in enumerate(bags):
            alone, alone_att = model(bag.unsqueeze(0), return_att=True)
            assert torch.allclose(logits[i], alone[0], atol=1e-5)
            assert torch.allclose(att[i, : len(bag)], alone_att[0], atol=1e-5)
    empty = torch.zeros_like(mask)
    out, att = model(X, empty, return_att=True)
    assert torch.isfinite(out).all() and torch.isfinite(model.deployment_attention(att, empty)).all()


def test_log_marginal_likelihood_per_instance():
    model = VAEABMIL(in_shape=(4,), att_dim=8, vae_layer_sizes=(5, 3))
    X, mask = _padded([torch.randn(3, 4), torch.randn(5, 4)])
    log_px = model.log_marginal_likelihood_importance_sampling(X, mask, n_samples=4)
    assert log_px.shape == (2, 5) and torch.all(log_px[~mask] == 0) and torch.isfinite(log_px).all()


def test_exports_without_random_ops_and_scripts(tmp_path):
    model = VAEABMIL(in_shape=(6,), att_dim=8, vae_layer_sizes=(5, 3))
    graph = onnx.load(export_onnx(model, tmp_path / "m.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert not any(op.startswith("Random") for op in ops)
    info = read_torchscript_info(export_torchscript(model, tmp_path / "m.pt"))
    assert info.extra["export"]["method"] == "script"
