"""API parity with torchmil 1.0.2 (a test dependency: never skipped): every public torchmil name exists in milsdk
at the same dotted path with a compatible signature, and behaves the same on small inputs, except the
differences listed, with their reasons, in ``milsdk.compat.torchmil_differences``."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", module="torchmil")

import torchmil  # noqa: E402, F401  (a hard dependency of this test: the test extra installs it)

from milsdk.compat.parity import run_parity  # noqa: E402
from milsdk.compat.parity_report import format_summary, unexplained  # noqa: E402
from milsdk.compat.torchmil_differences import ABSENT, BEHAVIOUR, SIGNATURE  # noqa: E402


@pytest.fixture(scope="module")
def report():
    return run_parity()


def test_every_name_present_or_listed(report, capsys):
    assert len(report.modules) >= 76 and len(report.names) >= 250
    assert [p for p in unexplained(report) if "absent" in p] == []
    with capsys.disabled():
        print("\n" + format_summary(report).splitlines()[0])


def test_signatures_compatible_or_listed(report):
    assert [p for p in unexplained(report) if "signature" in p] == []


def test_every_listed_difference_has_a_reason():
    for table in (ABSENT, SIGNATURE, BEHAVIOUR):
        assert all(isinstance(r, str) and len(r) > 20 for r in table.values())


# ---- behaviour on small inputs (same results, or exactly the listed difference) ----------------------------


def _close(a, b, tol=1e-6):
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float64)), torch.as_tensor(np.asarray(b, dtype=np.float64))
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol))


def test_pad_tensors_and_collate_fn_differ_only_in_mask_dtype():
    import milsdk.data as md
    import torchmil.data as td

    xs = [torch.randn(3, 2), torch.randn(5, 2)]
    (pr, mr), (po, mo) = td.pad_tensors(xs, -1), md.pad_tensors(xs, -1)
    assert torch.equal(pr, po) and torch.equal(mr.bool(), mo)
    assert "milsdk.data.collate.pad_tensors" in BEHAVIOUR and mr.dtype == torch.uint8 and mo.dtype == torch.bool
    bags = [{"X": x, "Y": torch.tensor(i)} for i, x in enumerate(xs)]
    r, o = td.collate_fn([dict(b) for b in bags]), md.collate_fn([dict(b) for b in bags])
    assert torch.equal(r["X"], o["X"]) and torch.equal(r["Y"], o["Y"]) and torch.equal(r["mask"].bool(), o["mask"])
    assert "milsdk.data.collate.collate_fn" in BEHAVIOUR and o["mask"].dtype == torch.bool


def test_seq_to_spatial_round_trip_matches():
    import milsdk.data as md
    import torchmil.data as td

    X, coords = torch.randn(2, 4, 3), torch.tensor([[[0, 0], [0, 1], [1, 0], [2, 1]]] * 2)
    S = td.seq_to_spatial(X, coords)
    assert torch.equal(S, md.seq_to_spatial(X, coords))
    assert torch.equal(td.spatial_to_seq(S, coords), md.spatial_to_seq(S, coords))


def test_masked_softmax_and_pools_match():
    import milsdk.nn as mn
    import torchmil.nn as tn

    X, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.uint8)
    assert torch.allclose(tn.masked_softmax(X, mask), mn.masked_softmax(X, mask), atol=1e-6)
    assert torch.allclose(tn.MaskedSoftmax()(X, mask), mn.MaskedSoftmax()(X, mask), atol=1e-6)
    assert torch.allclose(tn.MeanPool()(X, mask), mn.MeanPool()(X, mask), atol=1e-6)
    # torchmil's MaxPool raises on uint8 masks (its own collate_fn's dtype); milsdk takes both.
    assert torch.allclose(tn.MaxPool()(X, mask.bool()), mn.MaxPool()(X, mask), atol=1e-6)


def test_graph_utils_match_up_to_the_float32_weights():
    from milsdk.utils import graph_utils as mg
    from torchmil.utils import graph_utils as tg

    coords = np.array([[0, 0], [0, 1], [1, 1], [5, 5]], dtype=float)
    feat = np.random.default_rng(0).normal(size=(4, 3))
    for f in (None, feat):
        (ei_r, ew_r), (ei_o, ew_o) = tg.build_adj(coords, f, 1.5), mg.build_adj(coords, f, 1.5)
        assert np.array_equal(ei_r, ei_o) and _close(ew_r, ew_o)
        assert "milsdk.utils.graph_utils.build_adj" in BEHAVIOUR and ew_r.dtype == np.float64 and ew_o.dtype == np.float32
        assert _close(tg.degree(ei_r, ew_r, 4), mg.degree(ei_o, ew_o, 4))
        assert _close(tg.normalize_adj(ei_r, ew_r, 4), mg.normalize_adj(ei_o, ew_o, 4))
        (a_r, w_r), (a_o, w_o) = tg.add_self_loops(ei_r, ew_r, 4), mg.add_self_loops(ei_o, ew_o, 4)
        assert np.array_equal(a_r, a_o) and _close(w_r, w_o)


def test_annealing_schedulers_match():
    from milsdk.utils import annealing_scheduler as ma
    from torchmil.utils import annealing_scheduler as ta

    pairs = [
        (ta.ConstantAnnealingScheduler(0.3), ma.ConstantAnnealingScheduler(0.3)),
        (ta.LinearAnnealingScheduler(0.0, 1.0, 4), ma.LinearAnnealingScheduler(0.0, 1.0, 4)),
        (ta.CyclicalAnnealingScheduler(8, 0.0, 1.0, 0.5), ma.CyclicalAnnealingScheduler(8, 0.0, 1.0, 0.5)),
    ]

    def run(s):
        out = []
        for _ in range(12):
            out.append(float(s()))
            s.step()
        return out

    pairs += [  # warm-up, a jump (cycle_prop 0) and a ramp of one step
        (ta.CyclicalAnnealingScheduler(5, 0.2, 0.6, 0.4, warmup_steps=3),
         ma.CyclicalAnnealingScheduler(5, 0.2, 0.6, 0.4, warmup_steps=3)),
        (ta.CyclicalAnnealingScheduler(3, cycle_prop=0.0), ma.CyclicalAnnealingScheduler(3, cycle_prop=0.0)),
        (ta.CyclicalAnnealingScheduler(4, cycle_prop=0.25), ma.CyclicalAnnealingScheduler(4, cycle_prop=0.25)),
    ]
    for r, o in pairs:
        seq_r, seq_o = run(r), run(o)
        assert np.allclose(seq_r, seq_o), (type(r).__name__, seq_r, seq_o)


def test_visualize_canvas_helpers_match():
    from milsdk.visualize import vis_ctscan as mc, vis_wsi as mw
    from torchmil.visualize import vis_ctscan as tc, vis_wsi as tw

    rng = np.random.default_rng(0)
    patches = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)]
    rows, cols = np.array([0, 1, 2]), np.array([0, 1, 0])
    assert np.array_equal(tw.patches_to_canvas(patches, rows, cols, 4), mw.patches_to_canvas(patches, rows, cols, 4))
    slices = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)]
    assert np.array_equal(tc.slices_to_canvas(slices, 4), mc.slices_to_canvas(slices, 4))


def test_nn_utils_match():
    from milsdk.nn import utils as mu
    from torchmil.nn import utils as tu

    lin_r, lin_o = tu.LazyLinear(3, 2), mu.LazyLinear(3, 2)
    lin_o.load_state_dict({k.replace("module.", ""): v for k, v in lin_r.state_dict().items()})
    x = torch.randn(4, 3)
    assert torch.allclose(lin_r(x), lin_o(x))
    ext = torch.nn.Linear(3, 7)
    assert tu.get_feat_dim(ext, (3,)) == mu.get_feat_dim(ext, (3,)) == 7
    scores, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(tu.log_sum_exp(scores), mu.log_sum_exp(scores), atol=1e-6)
    labels = torch.arange(4)
    assert torch.equal(tu.delta(y, labels, 0.5), mu.delta(y, labels, 0.5))
    assert all(torch.equal(a, b) for a, b in zip(tu.detect_large(scores * 9, 1, 1.0, 1e3), mu.detect_large(scores * 9, 1, 1.0, 1e3)))
    pe = torch.zeros(2, 3, 4, 6)
    assert torch.allclose(tu.SinusoidalPositionalEncodingND(2, 6)(pe), mu.SinusoidalPositionalEncodingND(2, 6)(pe), atol=1e-6)


def test_get_args_names_matches():
    from milsdk.models.mil_model import get_args_names as ours
    from torchmil.models.mil_model import get_args_names as ref

    def f(X, mask=None, *args, return_att=False, **kw):
        return X

    import milsdk.models as mm

    model = mm.ABMIL(in_shape=(3,))
    assert ours(f) == tuple(ref(f)) == ("X", "mask")
    assert ours(model.forward) == tuple(ref(model.forward))
    assert ours(type(model).forward) == tuple(ref(type(model).forward))


def test_ppeg_reference_interface_matches():
    from milsdk.models.transmil import PPEG as Ours
    from torchmil.models.transmil import PPEG as Ref

    torch.manual_seed(0)
    ref, ours = Ref(4), Ours(4)
    for a, b in (("proj", "proj7"), ("proj1", "proj5"), ("proj2", "proj3")):
        getattr(ours, b).load_state_dict(getattr(ref, a).state_dict())
    x = torch.randn(2, 3 * 5 + 1, 4)
    with torch.no_grad():
        assert torch.allclose(ref(x, 3, 5), ours(x, 3, 5), atol=1e-5)


def test_camil_blocks_match_and_self_attention_differs_only_with_padding():
    from milsdk.models.camil import CAMILAttentionPool as OursPool, CAMILSelfAttention as OursAtt
    from torchmil.models.camil import CAMILAttentionPool as RefPool, CAMILSelfAttention as RefAtt

    torch.manual_seed(0)
    ref_att, ours_att = RefAtt(6, att_dim=4), OursAtt(6, att_dim=4)
    ours_att.load_state_dict({k.replace("_nn", ""): v for k, v in ref_att.state_dict().items()})
    ref_pool, ours_pool = RefPool(6, att_dim=5, gated=True), OursPool(6, att_dim=5, gated=True)
    ours_pool.load_state_dict(ref_pool.state_dict())
    X = torch.randn(2, 7, 6)
    adj = torch.rand(2, 7, 7) * (torch.rand(2, 7, 7) < 0.5)
    with torch.no_grad():
        for a in (adj, adj.to_sparse()):
            assert torch.allclose(ref_att(X, a), ours_att(X, a), atol=1e-6)
        M = torch.randn(2, 7, 6)
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.uint8)
        for got, want in zip(ours_pool(X, M, mask, return_att=True), ref_pool(X, M, mask, return_att=True)):
            assert torch.allclose(got, want, atol=1e-6)
        # The listed difference: with padding, torchmil's real outputs change (padded instances stay in its
        # softmax), milsdk's are those of the bag alone.
        assert "milsdk.models.camil.CAMILSelfAttention" in BEHAVIOUR
        alone = ref_att(X[1:, :4], adj[1:, :4, :4])
        assert torch.allclose(ours_att(X, adj, mask)[1, :4], alone, atol=1e-6)
        assert not torch.allclose(ref_att(X, adj, mask)[1, :4], alone, atol=1e-3)


def test_shifted_mean_normal_pdf_matches():
    from milsdk.datasets.shifted_mean_mil_dataset import normal_pdf as ours
    from torchmil.datasets.shifted_mean_mil_dataset import normal_pdf as ref

    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(ref(x, 0.5, 2.0), ours(x, 0.5, 2.0))


def test_synthetic_datasets_expose_the_reference_attributes():
    import milsdk.datasets as md

    for ds in (md.FalseFrequencyMILDataset(3, 4), md.MCStandardMILDataset(3, 4), md.SCStandardMILDataset(3, 4, 2)):
        assert ds.num_bags == 4 and len(ds.pos_distr) == 2 and ds.poisoning.mean.shape == (3,)
        assert ds.neg_distr.sample().shape == (3,)
    toy = md.ToyDataset(np.zeros((10, 2)), np.arange(10) % 2, 4, [1], 3)
    assert toy.num_bags == 4 and toy.pos_class_prob == 0.5 and len(toy.labels) == 10


def test_common_read_csv_and_existing_files_match(tmp_path):
    from milsdk.utils import common as mc
    from torchmil.utils import common as tc

    (tmp_path / "t.csv").write_text("bag_name,split\na,train\nb,test\n")
    (tmp_path / "a.npy").write_bytes(b"")
    assert tc.read_csv(str(tmp_path / "t.csv")) == mc.read_csv(str(tmp_path / "t.csv"))
    assert tc.keep_only_existing_files(str(tmp_path), ["a", "b"]) == mc.keep_only_existing_files(tmp_path, ["a", "b"])
    with pytest.raises(FileNotFoundError):
        mc.read_csv(tmp_path / "missing.csv")


def test_signature_rule_accepts_additions_and_rejects_renames():
    from milsdk.compat.parity import compare_signatures

    def ref(a, b=1): ...
    def ok(a, b=1, c=2, *, d=3): ...
    def renamed(a, c=1): ...
    def required_extra(a, b=1, c=None, *args, e): ...

    assert compare_signatures(ref, ok) == []
    assert compare_signatures(ref, renamed) and compare_signatures(ref, lambda a, b=2: 0)
    assert compare_signatures(ref, required_extra) == []
    assert inspect.signature(ref)


def test_relprop_layers_match():
    """Forward and relprop of every relprop layer equal torchmil's on the same inputs and weights."""
    from milsdk.nn import relprop as mr
    from torchmil.nn import relprop as tr

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4).abs() + 0.1
    cases = [
        ("Linear", lambda m: m.Linear(4, 3), torch.randn(2, 5, 4), (2, 5, 3)),
        ("AvgPool2d", lambda m: m.AvgPool2d(2), x, (2, 3, 2, 2)),
        ("MaxPool2d", lambda m: m.MaxPool2d(2), x, (2, 3, 2, 2)),
        ("AdaptiveAvgPool2d", lambda m: m.AdaptiveAvgPool2d(1), x, (2, 3, 1, 1)),
        ("BatchNorm2d", lambda m: m.BatchNorm2d(3).eval(), x, (2, 3, 4, 4)),
        ("AddEye", lambda m: m.AddEye(), torch.rand(1, 2, 3, 3), (1, 2, 3, 3)),
    ]
    for name, make, inp, out_shape in cases:
        ours, ref = make(mr), make(tr)
        ours.load_state_dict(ref.state_dict())
        assert torch.allclose(ours(inp), ref(inp), atol=1e-6), name
        R = torch.randn(out_shape)
        for alpha in (0.5, 1.0, 2.0):
            assert torch.allclose(ours.relprop(R, alpha), ref.relprop(R, alpha).detach(), atol=1e-5), name
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    for name, args in (("Add", ([a, b],)), ("Cat", ([a, b], 1)), ("Einsum", None), ("IndexSelect", None)):
        if name == "Einsum":
            ours, ref = mr.Einsum("ij,jk->ik"), tr.Einsum("ij,jk->ik")
            args, R = ([a, b.T],), torch.randn(2, 2)
        elif name == "IndexSelect":
            ours, ref = mr.IndexSelect(), tr.IndexSelect()
            args, R = (a, 1, torch.tensor([0, 2])), torch.randn(2, 2)
        else:
            ours, ref = getattr(mr, name)(), getattr(tr, name)()
            R = torch.randn(2, 3) if name == "Add" else torch.randn(2, 6)
        assert torch.allclose(ours(*args), ref(*args)), name
        mine, theirs = ours.relprop(R), ref.relprop(R)
        mine = mine if isinstance(mine, list) else [mine]
        theirs = theirs if isinstance(theirs, list) else [theirs]
        assert all(torch.allclose(m, t.detach(), atol=1e-6) for m, t in zip(mine, theirs)), name
    assert torch.equal(mr.safe_divide(a, b), tr.safe_divide(a, b))
    clone_m, clone_t = mr.Clone(), tr.Clone()
    clone_m(a, 2), clone_t(a, 2)
    Rs = (torch.randn(2, 3), torch.randn(2, 3))
    assert torch.allclose(clone_m.relprop(Rs), clone_t.relprop(Rs), atol=1e-6)


def test_relprop_transformer_matches_but_for_the_listed_branch_merge():
    """MultiheadSelfAttention: forward, input and attention relevance equal torchmil's. TransformerEncoder (1 layer,
    GTP's default): forward and attention-map relevance equal; the input relevance is the listed difference,
    torchmil's clone1 receiving the residual's relevance twice, milsdk's both branches'."""
    from milsdk.nn import relprop as mr
    from torchmil.nn import relprop as tr

    torch.manual_seed(0)
    X = torch.randn(1, 6, 8)
    att_m = mr.MultiheadSelfAttention(8, att_dim=8, n_heads=2)
    att_t = tr.MultiheadSelfAttention(8, att_dim=8, n_heads=2)
    att_m.load_state_dict(att_t.state_dict())
    assert torch.allclose(att_m(X), att_t(X), atol=1e-6)
    R = torch.randn(1, 6, 8)
    (Rm, Sm), (Rt, St) = att_m.relprop(R, return_att_relevance=True), att_t.relprop(R, return_att_relevance=True)
    assert torch.allclose(Rm, Rt.detach(), atol=1e-5) and torch.allclose(Sm, St.detach(), atol=1e-5)

    assert "milsdk.nn.relprop.TransformerLayer" in BEHAVIOUR and "milsdk.nn.relprop.TransformerEncoder" in BEHAVIOUR
    enc_m, enc_t = mr.TransformerEncoder(8, att_dim=16, n_heads=2, n_layers=1), tr.TransformerEncoder(
        8, att_dim=16, n_heads=2, n_layers=1)
    enc_m.load_state_dict(enc_t.state_dict())  # the same parameter names
    assert torch.allclose(enc_m(X), enc_t(X), atol=1e-5)
    R = torch.randn(1, 6, 8)
    (Rm, [Sm]), (Rt, [St]) = enc_m.relprop(R, return_att_relevance=True), enc_t.relprop(R, return_att_relevance=True)
    assert torch.allclose(Sm, St.detach(), atol=1e-5)
    # The listed difference, exactly: torchmil's own layers with clone1 given both branches give milsdk's result.
    layer = enc_t.layers[0]
    R_out = layer.out_proj.relprop(enc_t.norm.relprop(R))
    R_res, R_mlp = layer.add2.relprop(R_out)
    R_mid = layer.clone2.relprop((R_res, layer.norm2.relprop(layer.mlp_module.relprop(R_mlp))))
    R_res, R_att = layer.add1.relprop(R_mid)
    R_att = layer.norm1.relprop(layer.att_module.relprop(R_att))
    expected = layer.clone1.relprop((layer.in_proj.relprop(R_res), R_att))
    assert torch.allclose(Rm, expected.detach(), atol=1e-5)
    assert not torch.allclose(Rm, Rt.detach(), atol=1e-3)


def test_dtfdmil_eval_is_deterministic_where_torchmils_is_random(monkeypatch):
    """The listed difference: torchmil's eval forward reshuffles its pseudo-bags (numpy's global RNG) on every call,
    milsdk's splits the bag as given; with torchmil's shuffle off, milsdk's torchmil options compute its function."""
    import milsdk.models as mm
    import torchmil.models as tmm

    assert "milsdk.models.dtfdmil.DTFDMIL" in BEHAVIOUR
    torch.manual_seed(0)
    ref = tmm.DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3, distill_mode="afs").eval()
    ours = mm.DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3, distill_mode="afs", pseudo_bag_split="array_split",
                      distill_instances="all").eval()
    ours.load_state_dict({k.replace(".module.", "."): v for k, v in ref.state_dict().items()})
    X, mask = torch.randn(1, 10, 4), torch.ones(1, 10)
    with torch.no_grad():
        np.random.seed(0)
        first = ref(X, mask)
        np.random.seed(1)
        assert (ref(X, mask) - first).abs().max() > 1e-4
        assert torch.equal(ours(X, mask), ours(X, mask))
        monkeypatch.setattr(np.random, "shuffle", lambda x: None)
        assert torch.allclose(ours(X, mask), ref(X, mask), atol=1e-6)


def test_irpe_bucket_helpers_match():
    from milsdk.nn import irpe as mi
    from torchmil.nn import irpe as ti

    assert torch.equal(mi.get_absolute_positions(2, 3, torch.long, torch.device("cpu")),
                       ti.get_absolute_positions(2, 3, torch.long, torch.device("cpu")))
    values = torch.tensor([[5, -1, 5], [2, 2, -1]])
    (rank_m, n_m), (rank_t, n_t) = mi.quantize_values(values), ti.quantize_values(values)
    assert n_m == n_t == 3 and torch.equal(rank_m, rank_t) and rank_m.tolist() == [[2, 0, 2], [1, 1, 0]]
    M = ti.METHOD
    for method in (M.EUCLIDEAN, M.QUANT, M.PRODUCT, M.CROSS_ROWS, M.CROSS_COLS):
        for skip in (0, 1):
            args = (method, 4, 5, skip, 1.9, 3.8, 15.2)
            (ids_m, nb_m), (ids_t, nb_t) = mi.get_bucket_ids_2d(*args), ti.get_bucket_ids_2d(*args)
            assert nb_m == nb_t and torch.equal(ids_m, ids_t), (method, skip)
    ids, nb, L = mi.get_bucket_ids_2d_without_skip(M.CROSS_ROWS, 2, 2, 1.9, 3.8, 15.2)
    # rows of a 2 x 2 grid: offsets 0 or +-1, shifted by int(beta) = 3 into [0, 6]
    assert (nb, L) == (7, 4) and ids.tolist() == [[3, 3, 2, 2], [3, 3, 2, 2], [4, 4, 3, 3], [4, 4, 3, 3]]
    with pytest.raises(ValueError, match="skip must be 0 or 1"):
        mi.get_bucket_ids_2d(M.QUANT, 2, 2, 2, 1.9, 3.8, 15.2)
