"""torchmil -> milsdk conversion, against the real torchmil 1.0.2 package: a torchmil model with random weights,
saved as a state_dict file, converted, computes the same logits and attention on each bag alone.

Quantities compared, per model (eval mode, one bag at a time, bags of 1 to 5,000 instances):
- logits: torchmil's ``predict`` bag output (for DSMIL that is the mean of the bag and max-instance streams,
  which is what milsdk's forward returns; torchmil's forward returns the bag stream only);
- attention: what torchmil's ``forward(..., return_att=True)`` returns, against milsdk's
  ``forward(..., return_att=True)`` (both are pre-softmax scores for the ABMIL family, the softmax weights
  for DSMIL; DTFDMIL's forward has no return_att: its ``return_inst_cam`` tier-1 CAM, which torchmil puts back in
  the bag's order, against milsdk's attention, the same CAM).
ProbSmoothABMIL / TransformerProbSmoothABMIL sample the attention in torchmil's eval mode, VAEABMIL the latent
features; milsdk uses the mean (deterministic deployment); they are compared with the variance head set so that
every sample is the mean (log-variance / log std -60), the only setting where the two are defined to agree.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

torchmil_models = pytest.importorskip("torchmil.models")

from milsdk.export.api import export_checkpoint  # noqa: E402
from milsdk.export.verify import BatchCase, PaddingProbe, VerificationPlan  # noqa: E402
from milsdk.models.from_torchmil import from_torchmil  # noqa: E402
from milsdk.nn.attention.nystrom_attention import nystrom_attention_rows  # noqa: E402
from milsdk.utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

D = 32
SIZES = (1, 2, 37, 500, 5000)
TOL = 1e-5

# model -> (small torchmil config, largest bag size compared: 5,000 for every model)
CASES = {
    "ABMIL": ({"att_dim": 16}, 5000),
    "CAMIL": ({"nystrom_att_dim": 16, "pool_att_dim": 8, "n_heads": 2, "n_landmarks": 8}, 5000),
    "CLAM_SB": ({"att_dim": 8, "k_sample": 2}, 5000),
    "DSMIL": ({"att_dim": 8}, 5000),
    # K = 2 keeps the activations O(1) (see test_deepgraphsurv_variants_equal_torchmil_to_float32_rounding)
    "DeepGraphSurv": ({"hidden_dim": 8, "att_dim": 8, "K": 2}, 5000),
    # torchmil's 'maxmin' logits and CAM do not depend on its random grouping (tier 2 pools every instance):
    # compared here as they come; test_dtfdmil_equals_torchmil_under_its_drawn_grouping covers the grouping.
    "DTFDMIL": ({"att_dim": 8, "n_groups": 5}, 5000),
    "TransformerABMIL": ({"pool_att_dim": 8, "transf_att_dim": 16, "transf_n_heads": 2}, 5000),
    "PatchGCN": ({"n_gcn_layers": 2, "hidden_dim": 8, "att_dim": 8}, 5000),
    "SmABMIL": ({"att_dim": 8, "sm_steps": 3}, 5000),
    "SmTransformerABMIL": ({"pool_att_dim": 8, "pool_sm_steps": 2, "transf_att_dim": 8, "transf_n_heads": 2,
                            "transf_sm_steps": 2}, 5000),
    "SmoothABMIL": ({"att_dim": 8}, 5000),
    "ProbSmoothABMIL": ({"att_dim": 8, "n_samples_train": 4, "n_samples_test": 4}, 5000),
    "TransformerProbSmoothABMIL": ({"pool_att_dim": 8, "n_samples_train": 4, "n_samples_test": 4,
                                    "transf_att_dim": 16, "transf_n_heads": 2}, 5000),
    # the tokens are the bag's grid cells (S^2, S = 1 + the largest coordinate), so the cost is the grid's area
    "SETMIL": ({"att_dim": 16, "set_n_heads": 2}, 5000),
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
        if name == "DTFDMIL":  # its forward has no return_att: the instance CAM, in the bag's order
            logits, att = _call(model.forward, bag, return_inst_cam=True)
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


@pytest.mark.parametrize("config", [
    # gated pool, MLP (its norm2 is used), feature size = nystrom_att_dim: torchmil's fc1 is an identity
    {"nystrom_att_dim": D, "pool_att_dim": 8, "n_heads": 4, "n_landmarks": 5, "gated_pool": True,
     "use_mlp": True},
], ids=["gated-mlp-identity-fc1"])
def test_camil_variant_equals_torchmil(config):
    """Scaled-up local-attention weights, so that the neighbour scores move the logits by far more than the
    tolerance (with the shared 0.15 scale their effect fades below it at 5,000 instances)."""
    reference = _torchmil_model("CAMIL", config)
    with torch.no_grad():
        reference.camil_self_attention.qk_nn.weight.mul_(4.0)
        reference.camil_self_attention.v_nn.weight.mul_(4.0)
    model = from_torchmil(reference.state_dict(), "CAMIL", **config)
    assert model.config["in_shape"] == (D,) and isinstance(model.fc1, torch.nn.Identity)
    gen = torch.Generator().manual_seed(9)
    for n in (1, 3, 37, 300):
        bag = _bag(n, gen)
        ref_logits, ref_att = _torchmil_outputs("CAMIL", reference, bag)
        with torch.no_grad():
            logits, att = model(bag["X"], bag["adj"], return_att=True)
        torch.testing.assert_close(logits.reshape(-1), ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(att.reshape(-1), ref_att, atol=TOL, rtol=0)


def test_camil_needs_the_torchmil_options_and_n_landmarks():
    config = CASES["CAMIL"][0]
    state = _torchmil_model("CAMIL", config).state_dict()
    with pytest.raises(ValueError, match="CAMIL converts with local_attention='torchmil', not 'neighbours'"):
        from_torchmil(state, "CAMIL", local_attention="neighbours", **config)
    with pytest.raises(ValueError, match="CAMIL: pass the n_landmarks the model was built with"):
        from_torchmil(state, "CAMIL", **{**config, "n_landmarks": None})


DTFDMIL_SIZES = (1, 2, 8, 37, 500, 5000)  # with n_groups=5: bags of fewer instances, and sizes whose
# np.array_split differs from milsdk's default split (8: 2,2,2,1,1 vs 2,2,1,2,1)


def _dtfdmil_pair(config: dict):
    reference = _torchmil_model("DTFDMIL", config)
    return reference, from_torchmil(reference.state_dict(), "DTFDMIL", **config)


def _dtfdmil_torchmil(reference, X: torch.Tensor):
    """torchmil's bag logits (1,), pseudo-bag logits (1, G) and instance CAM (1, N), in the bag's order."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return reference(X, torch.ones(X.shape[:2]), return_pseudo_pred=True, return_inst_cam=True)


def _assert_dtfdmil_equal(ref, model, X: torch.Tensor, order: torch.Tensor):
    """milsdk on the bag in ``order`` (its attention mapped back to the bag's order) equals torchmil's ``ref``;
    torchmil's G pseudo-bags are milsdk's first G, the others (0) are the ones a small bag does not have."""
    ref_logits, ref_pseudo, ref_cam = ref
    with torch.no_grad():
        logits, att = model(X[:, order], return_att=True)
        _, pseudo = model(X[:, order], return_pseudo_pred=True)
    back = torch.empty_like(att)
    back[:, order] = att
    G = ref_pseudo.shape[1]
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    torch.testing.assert_close(pseudo[:, :G], ref_pseudo, atol=TOL, rtol=0)
    assert (pseudo[:, G:] == 0).all()
    torch.testing.assert_close(back, ref_cam, atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["maxmin", "max", "afs"])
def test_dtfdmil_equals_torchmil_under_its_drawn_grouping(mode, monkeypatch):
    """torchmil's forward draws one np.random.shuffle of np.arange(N) from numpy's global RNG (eval mode too) and
    np.array_splits it into min(n_groups, N) pseudo-bags. Replaying the draw from the same seed and feeding milsdk
    the bag in the drawn order makes milsdk's pseudo-bags torchmil's: equal logits, pseudo-bag logits and CAM."""
    reference, model = _dtfdmil_pair({"att_dim": 8, "n_groups": 5, "distill_mode": mode})
    shuffle, drawn = np.random.shuffle, []

    def recording_shuffle(x):
        shuffle(x)
        drawn.append(np.array(x))

    monkeypatch.setattr(np.random, "shuffle", recording_shuffle)
    gen = torch.Generator().manual_seed(9)
    for seed, n in enumerate(DTFDMIL_SIZES):
        X = torch.randn(1, n, D, generator=gen)
        np.random.seed(seed)
        order = np.arange(n)
        shuffle(order)  # the draw torchmil will make
        np.random.seed(seed)
        drawn.clear()
        ref = _dtfdmil_torchmil(reference, X)
        assert len(drawn) == 1 and np.array_equal(drawn[0], order)  # one draw per forward: the replayed one
        _assert_dtfdmil_equal(ref, model, X, torch.as_tensor(order))


@pytest.mark.parametrize("mode", ["maxmin", "afs"])
def test_dtfdmil_unshuffled_torchmil_equals_milsdk_on_the_bag_as_given(mode, monkeypatch):
    """Without its shuffle torchmil splits the bag in order, as milsdk does; milsdk's default sizes would not match."""
    from milsdk.models import DTFDMIL

    config = {"att_dim": 8, "n_groups": 5, "distill_mode": mode}
    reference, model = _dtfdmil_pair(config)
    default = DTFDMIL(in_shape=(D,), **config).eval()
    default.load_state_dict(model.state_dict())
    monkeypatch.setattr(np.random, "shuffle", lambda x: None)
    gen = torch.Generator().manual_seed(10)
    for n in DTFDMIL_SIZES:
        X = torch.randn(1, n, D, generator=gen)
        ref = _dtfdmil_torchmil(reference, X)
        _assert_dtfdmil_equal(ref, model, X, torch.arange(n))
        if n == 37:  # sizes 8,8,7,7,7 (torchmil) vs 8,7,8,7,7 (milsdk's proportional split)
            with torch.no_grad():
                _, pseudo = default(X, return_pseudo_pred=True)
            assert (pseudo - ref[1]).abs().max() > 1e-3


def test_dtfdmil_refuses_other_milsdk_options():
    state = _torchmil_model("DTFDMIL", CASES["DTFDMIL"][0]).state_dict()
    with pytest.raises(ValueError, match="DTFDMIL converts with pseudo_bag_split='array_split', not 'proportional'"):
        from_torchmil(state, "DTFDMIL", pseudo_bag_split="proportional", **CASES["DTFDMIL"][0])


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
    forward_row_chunked = last.forward_row_chunked

    def keep_factors(x, mask=None, chunk_size=4096, length_bound=0, row=0, need_att=True):
        # the model runs the chunked class-row form; its factors are those of the unchunked one on the same tokens
        factors.append(last.forward_att(x, mask)[1])
        return forward_row_chunked(x, mask, chunk_size, length_bound, row, need_att)

    monkeypatch.setattr(last, "forward_row_chunked", keep_factors)
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


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_checkpoint_exports_and_verifies(name, converted, tmp_path):
    reference, model = converted[name]
    ckpt = save_checkpoint(model, tmp_path / f"{name}.ckpt")
    rebuilt = load_checkpoint(ckpt)
    bag = _bag(37, torch.Generator().manual_seed(3))
    ref_logits, _ = _torchmil_outputs(name, reference, bag)
    with torch.no_grad():
        torch.testing.assert_close(_call(rebuilt.forward, bag).reshape(-1), ref_logits, atol=TOL, rtol=0)
    if name == "SETMIL":  # grid="all_cells" has no ONNX graph (test_setmil_onnx_export_is_refused_in_one_line)
        # a few small bags: the verifier's coords sit up to 100 cells from the origin, i.e. ~10^4 grid cells each
        plan = VerificationPlan(cases=(BatchCase(1, 1), BatchCase(2, 3, mixed=True)),
                                padding=(PaddingProbe(1, 4, 2),), scan=(1, 2))
        result = export_checkpoint(ckpt, tmp_path / "export", ("torchscript",), plan=plan)
        assert len(result.artifacts) == 1 and result.artifacts[0].report.passed
        return
    formats = ("onnx", "torchscript") if name in ("DeepGraphSurv", "TransMIL", "DTFDMIL") else ("onnx",)  # new paths
    result = export_checkpoint(ckpt, tmp_path / "export", formats, plan=VerificationPlan.quick())
    assert len(result.artifacts) == len(formats) and all(a.report.passed for a in result.artifacts)
    assert (tmp_path / "export" / "model.onnx").is_file()


def _setmil_bag(n: int, gen: torch.Generator, offset: tuple[int, int] = (0, 0), spread: int = 2):
    """A bag on distinct cells of a sparse square (empty cells in between), moved by ``offset``."""
    side = int(n**0.5) + spread
    cells = torch.randperm(side * side, generator=gen)[:n]
    coords = torch.stack([cells // side + offset[0], cells % side + offset[1]], -1).unsqueeze(0).float()
    return {"X": torch.randn(1, n, D, generator=gen), "mask": torch.ones(1, n, dtype=torch.bool), "coords": coords}


@pytest.mark.parametrize("config", [
    {"att_dim": 16, "set_n_heads": 2, "rpe_skip": 0, "set_n_layers": 2},  # the class token on the grid
    {"att_dim": 16, "set_n_heads": 4, "rpe_method": "euc", "rpe_mode": "bias", "rpe_on": "qk", "set_use_mlp": False},
    {"att_dim": D, "set_n_heads": 2, "rpe_method": "cross", "rpe_on": "qkv", "rpe_shared_head": False},
    {"att_dim": 16, "set_n_heads": 2, "use_pmf": True, "pmf_n_heads": 2, "pmf_kernel_list": [(3, 3), (5, 5)],
     "pmf_stride_list": [(1, 1), (1, 1)], "pmf_padding_list": [(1, 1), (2, 2)],
     "pmf_dilation_list": [(1, 1), (1, 1)]},
    {"att_dim": 16, "set_n_heads": 2, "use_pmf": True, "pmf_n_heads": 2, "pmf_use_mlp": False,
     "pmf_kernel_list": [(3, 3)], "pmf_stride_list": [(2, 2)], "pmf_padding_list": [(1, 1)],
     "pmf_dilation_list": [(1, 1)]},  # a strided pyramid: fewer tokens than cells
], ids=["skip0-2-layers", "euc-bias-qk", "cross-qkv-identity-proj", "pmf", "pmf-strided-no-mlp"])
def test_setmil_variants_equal_torchmil(config):
    """torchmil's SETMIL over each bag's whole grid (empty cells, origin 0, non-square sequences padded to a
    square, its head reshape). With PMF torchmil's attention is zeros: milsdk's too for a strided pyramid; for one
    that keeps the grid, the class token's weights at the instances' cells (a distribution: the export verifies)."""
    reference = _torchmil_model("SETMIL", config)
    model = from_torchmil(reference.state_dict(), "SETMIL", **config)
    assert model.config["grid"] == "all_cells" and model.config["in_shape"] == (D,)
    gen = torch.Generator().manual_seed(10)
    for n, offset in ((1, (0, 0)), (1, (3, 1)), (2, (0, 5)), (6, (2, 0)), (40, (1, 2))):
        bag = _setmil_bag(n, gen, offset)
        ref_logits, ref_att = _torchmil_outputs("SETMIL", reference, bag)
        with torch.no_grad():
            logits, att = model(bag["X"], bag["mask"], bag["coords"], return_att=True)
        torch.testing.assert_close(logits.reshape(-1), ref_logits, atol=TOL, rtol=0)
        if config.get("use_pmf") and model.att_on_cells:  # torchmil's zeros; milsdk: the class token's weights
            assert (ref_att == 0).all() and (att > 0).all()  # at the cells (its pyramid keeps the grid)
        else:
            torch.testing.assert_close(att.reshape(-1), ref_att, atol=TOL, rtol=0)


def test_setmil_converted_model_is_padding_invariant():
    """Each bag of a padded batch gets its own grid (the others' cells masked): its logits and attention alone."""
    config = CASES["SETMIL"][0]
    model = from_torchmil(_torchmil_model("SETMIL", config).state_dict(), "SETMIL", **config)
    gen = torch.Generator().manual_seed(11)
    bags = [_setmil_bag(n, gen, offset) for n, offset in ((3, (0, 0)), (17, (4, 1)), (1, (0, 2)))]
    top = max(b["X"].shape[1] for b in bags) + 2
    X, coords = torch.zeros(len(bags), top, D), torch.full((len(bags), top, 2), 50.0)  # padding far away
    mask = torch.zeros(len(bags), top, dtype=torch.bool)
    for i, bag in enumerate(bags):
        n = bag["X"].shape[1]
        X[i, :n], coords[i, :n], mask[i, :n] = bag["X"][0], bag["coords"][0], True
    with torch.no_grad():
        logits, att = model(X, mask, coords, return_att=True)
        for i, bag in enumerate(bags):
            n = bag["X"].shape[1]
            alone_logits, alone_att = model(bag["X"], bag["mask"], bag["coords"], return_att=True)
            torch.testing.assert_close(logits[i], alone_logits[0], atol=TOL, rtol=0)
            torch.testing.assert_close(att[i, :n], alone_att[0], atol=TOL, rtol=0)
            assert (att[i, n:] == 0).all()


def test_setmil_onnx_export_is_refused_in_one_line(converted, tmp_path):
    from milsdk.errors import ModelConfigError

    _, model = converted["SETMIL"]
    ckpt = save_checkpoint(model, tmp_path / "SETMIL.ckpt")
    with pytest.raises(ModelConfigError) as info:
        export_checkpoint(ckpt, tmp_path / "export", ("onnx",), plan=VerificationPlan.quick())
    assert str(info.value).startswith("SETMIL: grid='all_cells' cannot be exported to ONNX: the grid's size "
                                      "depends on the coords' values") and "\n" not in str(info.value)
    assert not (tmp_path / "export" / "model.onnx").exists()


@pytest.mark.parametrize("config", [
    {},  # torchmil's defaults: K = 5, hidden_dim = the feature size, att_dim = 128
    {"hidden_dim": 8, "att_dim": 8, "K": 3, "n_layers_rep": 2, "n_layers_att": 2},
], ids=["defaults-K5", "K3-2-layers"])
def test_deepgraphsurv_variants_equal_torchmil_to_float32_rounding(config):
    """torchmil's term layout at other K and depths; in_shape from the weights (K * D inputs). lambda_max = 2
    under-scales the Laplacian of a weighted 8-neighbour graph, so the higher Chebyshev terms grow (activations of
    1e2 to 1e4 at K = 5), where torchmil's own float32 rounding (against itself in float64) exceeds 1e-5: the
    tolerance is 1e-5 relative to the largest entry."""
    reference = _torchmil_model("DeepGraphSurv", config)
    model = from_torchmil(reference.state_dict(), "DeepGraphSurv", **config)
    assert model.config["in_shape"] == (D,) and model.config["term_layout"] == "torchmil"
    gen = torch.Generator().manual_seed(9)
    for n in (1, 2, 3, 7, 37):
        bag = _bag(n, gen)
        ref_logits, ref_att = _torchmil_outputs("DeepGraphSurv", reference, bag)
        with torch.no_grad():
            logits, att = model(bag["X"], bag["adj"], return_att=True)
        for got, want in ((logits.reshape(-1), ref_logits), (att.reshape(-1), ref_att)):
            torch.testing.assert_close(got, want, atol=TOL * max(1.0, float(want.abs().max())), rtol=0)


def test_deepgraphsurv_converted_model_is_padding_invariant_and_refuses_torchmil_lambda_max(converted):
    """torchmil's layout is applied per bag (its own instance count): each bag of a padded batch gets torchmil's
    outputs on the bag alone. torchmil's compute_lambda_max (an eigenvalue of A, not of D - A) is refused, and a K
    that does not divide the first layer's inputs is named."""
    from milsdk.errors import ModelConfigError

    reference, model = converted["DeepGraphSurv"]
    gen = torch.Generator().manual_seed(10)
    bags = [_bag(n, gen) for n in (3, 17, 40)]
    N = 40
    X = torch.full((len(bags), N, D), 7.0)
    adj = torch.ones(len(bags), N, N)  # edges into the padding: dropped by the mask
    mask = torch.zeros(len(bags), N, dtype=torch.bool)
    for b, bag in enumerate(bags):
        n = bag["X"].shape[1]
        X[b, :n], adj[b, :n, :n], mask[b, :n] = bag["X"][0], bag["adj"][0], True
    with torch.no_grad():
        logits, att = model(X, adj, mask, return_att=True)
    for b, bag in enumerate(bags):
        ref_logits, ref_att = _torchmil_outputs("DeepGraphSurv", reference, bag)
        torch.testing.assert_close(logits[b : b + 1], ref_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(att[b, : ref_att.numel()], ref_att, atol=TOL, rtol=0)
    with pytest.raises(ModelConfigError, match="only with compute_lambda_max=False: torchmil's True scales"):
        from_torchmil(reference.state_dict(), "DeepGraphSurv", compute_lambda_max=True, **CASES["DeepGraphSurv"][0])
    with pytest.raises(ValueError, match=r"'layers_rep\.0\.fc\.weight' has 64 inputs, not a multiple of K=3"):
        from_torchmil(reference.state_dict(), "DeepGraphSurv", hidden_dim=8, att_dim=8, K=3)  # trained with K=2


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
    with pytest.raises(ValueError, match="no torchmil conversion for model 'CLAM_MB'; convertible: ABMIL, "):
        from_torchmil({"w": torch.zeros(1)}, "CLAM_MB")  # milsdk's own model, not in torchmil


def test_public_entry_point():
    import milsdk.models

    assert milsdk.models.from_torchmil is from_torchmil


def test_models_that_differ_by_design_are_refused_in_one_line_naming_why(monkeypatch):
    """Every shared model converts today (NOT_CONVERTIBLE is empty); the refusal of one listed there is one line."""
    from milsdk.errors import ModelConfigError
    from milsdk.models.from_torchmil import NOT_CONVERTIBLE

    assert NOT_CONVERTIBLE == {}
    monkeypatch.setitem(NOT_CONVERTIBLE, "ABMIL", "a reason naming what differs")
    with pytest.raises(ModelConfigError) as info:
        from_torchmil({"w": torch.zeros(1)}, "ABMIL")
    message = str(info.value)
    assert message == "torchmil ABMIL cannot be converted: a reason naming what differs" and "\n" not in message
