"""torchmil -> milsdk conversion, against the real torchmil 1.0.2 package: a torchmil model with random weights,
saved as a state_dict file, converted, computes the same logits and attention on each bag alone.

Quantities compared, per model (eval mode, one bag at a time, bags of 1 to 5,000 instances):
- logits: torchmil's ``predict`` bag output (for DSMIL that is the mean of the bag and max-instance streams,
  which is what milsdk's forward returns; torchmil's forward returns the bag stream only);
- attention: what torchmil's ``forward(..., return_att=True)`` returns, against milsdk's
  ``forward(..., return_att=True)`` (both are pre-softmax scores for the ABMIL family, the softmax weights
  for DSMIL).
ProbSmoothABMIL / TransformerProbSmoothABMIL sample the attention in torchmil's eval mode, VAEABMIL the latent
features; milsdk uses the mean (deterministic deployment); they are compared with the variance head set so that
every sample is the mean (log-variance / log std -60), the only setting where the two are defined to agree.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

torchmil_models = pytest.importorskip("torchmil.models")

from milsdk.export.api import export_checkpoint  # noqa: E402
from milsdk.export.verify import VerificationPlan  # noqa: E402
from milsdk.models.from_torchmil import from_torchmil  # noqa: E402
from milsdk.nn.attention.nystrom_attention import nystrom_attention_rows  # noqa: E402
from milsdk.utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

D = 32
SIZES = (1, 2, 37, 500, 5000)
TOL = 1e-5

# model -> (small torchmil config, largest bag size that is cheap for it)
CASES = {
    "ABMIL": ({"att_dim": 16}, 5000),
    "CLAM_SB": ({"att_dim": 8, "k_sample": 2}, 5000),
    "DSMIL": ({"att_dim": 8}, 5000),
    "TransformerABMIL": ({"pool_att_dim": 8, "transf_att_dim": 16, "transf_n_heads": 2}, 500),
    "PatchGCN": ({"n_gcn_layers": 2, "hidden_dim": 8, "att_dim": 8}, 500),
    "SmABMIL": ({"att_dim": 8, "sm_steps": 3}, 500),
    "SmTransformerABMIL": ({"pool_att_dim": 8, "pool_sm_steps": 2, "transf_att_dim": 8, "transf_n_heads": 2,
                            "transf_sm_steps": 2}, 500),
    "SmoothABMIL": ({"att_dim": 8}, 5000),
    "ProbSmoothABMIL": ({"att_dim": 8, "n_samples_train": 4, "n_samples_test": 4}, 5000),
    "TransformerProbSmoothABMIL": ({"pool_att_dim": 8, "n_samples_train": 4, "n_samples_test": 4,
                                    "transf_att_dim": 16, "transf_n_heads": 2}, 500),
    "TransMIL": ({"att_dim": 16, "n_heads": 2, "n_landmarks": 8}, 5000),
    "IIBMIL": ({"att_dim": 16, "n_heads": 2}, 5000),
    "GTP": ({"att_dim": 16, "n_heads": 2, "n_clusters": 4}, 5000),
    "VAEABMIL": ({"att_dim": 8, "vae_layer_sizes": (16, 8)}, 5000),
}

# Models whose attention output differs by design; their layers' attention is compared in a test of their own.
ATTENTION_BY_DESIGN = {
    "TransMIL": "torchmil returns the class row of the last layer's Nystrom approximation (negative where its "
                "pseudo-inverse has not converged), milsdk the exact softmax row (a distribution); "
                "test_transmil_nystrom_attention_row_equals_torchmil compares the approximation",
    "IIBMIL": "torchmil's forward returns no attention (milsdk: the decoder's class-token attention); its "
              "instance logits are compared in test_iibmil_instance_logits_equal_torchmil",
    "GTP": "torchmil's map is GraphCAM by relevance propagation (return_cam; not a distribution), milsdk's the "
           "class token's cluster attention mapped to the instances",
}


def _bag(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One bag of n instances on a grid: features, an all-True bool mask, coords and a weighted 8-neighbour adj."""
    X = torch.randn(1, n, D, generator=gen)
    side = int(n**0.5) + 1
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    coords = grid[:n].unsqueeze(0).float()
    # no self-loops, as the adjacency torchmil's datasets build from coords
    near = (torch.cdist(coords, coords) <= 1.5).float() * (1 - torch.eye(n))
    adj = near * torch.rand(1, n, n, generator=gen)
    return {"X": X, "mask": torch.ones(1, n, dtype=torch.bool), "adj": (adj + adj.transpose(1, 2)) / 2,
            "coords": coords}


def _call(fn, bag: dict[str, torch.Tensor], **flags):
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in bag.items() if k in params}
    kwargs.update({k: v for k, v in flags.items() if k in params})
    return fn(**kwargs)


def _torchmil_model(name: str, config: dict) -> torch.nn.Module:
    """A torchmil model with random (not default-initialised) weights, lazy layers materialised, eval mode."""
    torch.manual_seed(0)
    if name == "VAEABMIL":  # torchmil's takes the user's autoencoder, milsdk's its layer sizes
        from torchmil.nn import VariationalAutoEncoderMIL

        config = dict(config)
        vae = VariationalAutoEncoderMIL(input_shape=(D,), layer_sizes=list(config.pop("vae_layer_sizes")))
        config["feat_ext"] = vae
    model = getattr(torchmil_models, name)(in_shape=(D,), **config).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        _call(model.forward, _bag(5, torch.Generator().manual_seed(0)))
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.15)
        for key, p in model.named_parameters():
            if key.endswith("sm.coef"):  # trainable Sm strength: != 1, where the libraries' alphas differ
                p.fill_(0.4)
        if name in ("ProbSmoothABMIL", "TransformerProbSmoothABMIL"):
            model.pool.log_diag_Sigma_nn.weight.zero_()
            model.pool.log_diag_Sigma_nn.bias.fill_(-60.0)
        if name == "VAEABMIL":  # the encoder's last output is the (single) log std: samples = the mean
            last = model.feat_ext.encoder.net[-1]
            last.weight[-1:].zero_()
            last.bias[-1:].fill_(-60.0)
    return model


def _torchmil_outputs(name: str, model: torch.nn.Module, bag: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torchmil's logits and attention (None for a model whose forward returns no attention)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = _call(model.forward, bag, return_att=True)
        logits, att = out if isinstance(out, tuple) else (out, None)
        if name == "DSMIL":
            logits = _call(model.predict, bag, return_inst_pred=False)
    return logits.reshape(-1), None if att is None else att.reshape(-1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (torchmil model, milsdk model converted from its state_dict file)."""
    folder = tmp_path_factory.mktemp("torchmil")
    out = {}
    for name, (config, _) in CASES.items():
        reference = _torchmil_model(name, config)
        path = folder / f"{name}.pth"
        torch.save(reference.state_dict(), path)
        out[name] = (reference, from_torchmil(path, name, in_shape=(D,), **config))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_model_equals_torchmil(name, converted):
    reference, model = converted[name]
    gen = torch.Generator().manual_seed(1)
    worst_logit = worst_att = 0.0
    for n in (s for s in SIZES if s <= CASES[name][1]):
        bag = _bag(n, gen)
        ref_logits, ref_att = _torchmil_outputs(name, reference, bag)
        with torch.no_grad():
            logits, att = _call(model.forward, bag, return_att=True)
        worst_logit = max(worst_logit, (logits.reshape(-1) - ref_logits).abs().max().item())
        if name not in ATTENTION_BY_DESIGN:
            assert ref_att is not None
            worst_att = max(worst_att, (att.reshape(-1) - ref_att).abs().max().item())
    assert worst_logit <= TOL and worst_att <= TOL, (name, worst_logit, worst_att)


def test_abmil_with_default_config_and_inferred_in_shape(tmp_path):
    """The torchmil defaults are the milsdk defaults; in_shape comes from the weights."""
    reference = _torchmil_model("ABMIL", {})
    model = from_torchmil(reference.state_dict(), "ABMIL")
    assert model.config["in_shape"] == (D,) and model.config["att_dim"] == 128
    bag = _bag(37, torch.Generator().manual_seed(2))
    ref_logits, ref_att = _torchmil_outputs("ABMIL", reference, bag)
    logits, att = model(bag["X"], return_att=True)
    torch.testing.assert_close(logits.reshape(-1), ref_logits, atol=TOL, rtol=0)
    torch.testing.assert_close(att.reshape(-1), ref_att, atol=TOL, rtol=0)


@pytest.mark.parametrize("config", [
    {"att_dim": 16, "n_heads": 2},
    {"att_dim": D, "n_heads": 4, "n_layers_encoder": 2, "n_layers_decoder": 2, "use_mlp_decoder": True},
], ids=["default-layers", "deeper-identity-feat-proj"])
def test_iibmil_instance_logits_equal_torchmil(config):
    reference = _torchmil_model("IIBMIL", config)
    model = from_torchmil(reference.state_dict(), "IIBMIL", **config)
    gen = torch.Generator().manual_seed(7)
    for n in (1, 2, 37, 300):
        X = torch.randn(1, n, D, generator=gen)
        with torch.no_grad():
            ref_logits, ref_inst = reference(X, return_inst_pred=True)
            logits, _, inst, _ = model.forward_all(X)
        torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(inst, ref_inst, atol=TOL, rtol=0)


@pytest.mark.parametrize("config", [
    {"att_dim": 32, "n_heads": 4, "n_clusters": 6, "n_layers": 2, "use_mlp": False},  # no MLP: unused norm2
], ids=["2-layers-no-mlp"])
def test_gtp_variant_equals_torchmil(config):
    reference = _torchmil_model("GTP", config)
    model = from_torchmil(reference.state_dict(), "GTP", **config)
    assert model.config["in_shape"] == (D,) and model.config["mlp_activation"] == "relu"
    gen = torch.Generator().manual_seed(8)
    for n in (1, 3, 200):
        bag = _bag(n, gen)
        ref_logits, _ = _torchmil_outputs("GTP", reference, bag)
        with torch.no_grad():
            torch.testing.assert_close(model(bag["X"], bag["adj"]).reshape(-1), ref_logits, atol=TOL, rtol=0)


def _transmil_pair(config: dict):
    reference = _torchmil_model("TransMIL", config)
    return reference, from_torchmil(reference.state_dict(), "TransMIL", **config)


@pytest.mark.parametrize("config", [
    {"att_dim": 16, "n_heads": 2, "n_landmarks": 8, "n_layers": 3, "use_mlp": True},  # MLP, middle layer
    {"att_dim": D, "n_heads": 4, "n_landmarks": 5},  # feature size = att_dim: torchmil's fc1 is an identity
], ids=["mlp-3-layers", "identity-fc1"])
def test_transmil_variants_equal_torchmil(config):
    reference, model = _transmil_pair(config)
    assert model.config["in_shape"] == (D,)  # from fc1, or from the class token when fc1 is an identity
    gen = torch.Generator().manual_seed(4)
    for n in (1, 4, 5, 6, 26, 300):
        bag = _bag(n, gen)
        ref_logits, _ = _torchmil_outputs("TransMIL", reference, bag)
        with torch.no_grad():
            torch.testing.assert_close(model(bag["X"]).reshape(-1), ref_logits, atol=TOL, rtol=0)


def test_transmil_nystrom_attention_row_equals_torchmil(monkeypatch):
    """torchmil's TransMIL attention is the class row of its last layer's Nystrom approximation over the bag's
    first n tokens; the converted model's last layer computes the same factors."""
    reference, model = _transmil_pair(CASES["TransMIL"][0])
    last = model.layers[-1].att
    factors = []
    forward_att = last.forward_att

    def keep_factors(x, mask=None):
        y, att = forward_att(x, mask)
        factors.append(att)
        return y, att

    monkeypatch.setattr(last, "forward_att", keep_factors)
    gen = torch.Generator().manual_seed(5)
    for n in (1, 3, 9, 37, 500):
        bag = _bag(n, gen)
        _, ref_att = _torchmil_outputs("TransMIL", reference, bag)
        factors.clear()
        with torch.no_grad():
            model(bag["X"])
            row = nystrom_attention_rows(factors[0], torch.tensor([0])).mean(dim=1)[0, 0, 1 : n + 1]
        torch.testing.assert_close(row, ref_att, atol=TOL, rtol=0)


def test_transmil_converted_model_is_padding_invariant():
    """torchmil's landmark scheme is applied per bag: a bag padded in a batch gives its logits alone."""
    _, model = _transmil_pair(CASES["TransMIL"][0])
    gen = torch.Generator().manual_seed(6)
    sizes = (3, 17, 40)
    X = torch.zeros(len(sizes), max(sizes), D)
    mask = torch.zeros(len(sizes), max(sizes), dtype=torch.bool)
    alone = []
    with torch.no_grad():
        for b, n in enumerate(sizes):
            X[b, :n] = torch.randn(n, D, generator=gen)
            mask[b, :n] = True
            alone.append(model(X[b : b + 1, :n], return_att=True))
        logits, att = model(X, mask, return_att=True)
    for b, n in enumerate(sizes):
        torch.testing.assert_close(logits[b], alone[b][0][0], atol=TOL, rtol=0)
        torch.testing.assert_close(att[b, :n], alone[b][1][0], atol=TOL, rtol=0)


def test_transmil_refuses_other_milsdk_options():
    state = _torchmil_model("TransMIL", CASES["TransMIL"][0]).state_dict()
    with pytest.raises(ValueError, match="TransMIL converts with embed='linear_or_identity'"):
        from_torchmil(state, "TransMIL", embed="linear_relu", **CASES["TransMIL"][0])


@pytest.mark.parametrize("name", ["ABMIL", "TransformerABMIL", "TransMIL", "GTP"])
def test_converted_checkpoint_exports_and_verifies(name, converted, tmp_path):
    reference, model = converted[name]
    ckpt = save_checkpoint(model, tmp_path / f"{name}.ckpt")
    rebuilt = load_checkpoint(ckpt)
    bag = _bag(37, torch.Generator().manual_seed(3))
    ref_logits, _ = _torchmil_outputs(name, reference, bag)
    with torch.no_grad():
        torch.testing.assert_close(_call(rebuilt.forward, bag).reshape(-1), ref_logits, atol=TOL, rtol=0)
    formats = ("onnx", "torchscript") if name == "TransMIL" else ("onnx",)  # TransMIL: new code paths
    result = export_checkpoint(ckpt, tmp_path / "export", formats, plan=VerificationPlan.quick())
    assert len(result.artifacts) == len(formats) and all(a.report.passed for a in result.artifacts)
    assert (tmp_path / "export" / "model.onnx").is_file()


def test_wrong_config_names_the_key():
    reference = _torchmil_model("ABMIL", {"att_dim": 16})
    with pytest.raises(ValueError, match=r"key 'pool\.fc1\.module\.weight' has shape \(16, 32\)"):
        from_torchmil(reference.state_dict(), "ABMIL", in_shape=(D,), att_dim=8)


def test_missing_and_unexpected_keys_are_named():
    state = _torchmil_model("ABMIL", {"att_dim": 16}).state_dict()
    extra = dict(state, **{"pool.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"key 'pool\.extra\.weight' has no place"):
        from_torchmil(extra, "ABMIL", in_shape=(D,), att_dim=16)
    del state["pool.fc2.weight"]
    with pytest.raises(ValueError, match=r"no weights for 'pool\.fc2\.weight'"):
        from_torchmil(state, "ABMIL", in_shape=(D,), att_dim=16)


def test_every_shared_model_is_converted_or_has_a_reason():
    from milsdk.models import list_models
    from milsdk.models.from_torchmil import NOT_CONVERTIBLE, convertible_models

    shared = {name for name in list_models() if hasattr(torchmil_models, name)}
    assert set(convertible_models()) == set(CASES)
    assert shared == set(CASES) | set(NOT_CONVERTIBLE)
    with pytest.raises(ValueError, match="DTFDMIL cannot be converted: torchmil shuffles"):
        from_torchmil({"w": torch.zeros(1)}, "DTFDMIL")


def test_public_entry_point():
    import milsdk.models

    assert milsdk.models.from_torchmil is from_torchmil


@pytest.mark.parametrize("name", ["CAMIL", "DeepGraphSurv", "DTFDMIL", "SETMIL"])
def test_models_that_differ_by_design_are_refused_in_one_line_naming_why(name):
    from milsdk.errors import ModelConfigError
    from milsdk.models.from_torchmil import NOT_CONVERTIBLE

    with pytest.raises(ModelConfigError) as info:
        from_torchmil({"w": torch.zeros(1)}, name)
    message = str(info.value)
    assert message == f"torchmil {name} cannot be converted: {NOT_CONVERTIBLE[name]}" and "\n" not in message
