"""What is special to SETMIL: coords are required, outputs are translation-invariant, PMF keeps one token per
instance (its attention is a distribution), the neighbourhood lookup equals a dense unfold, PMF exports."""

from __future__ import annotations

import pytest
import torch

from milsdk.export.onnx import export_onnx
from milsdk.export.torchscript import export_torchscript
from milsdk.export.verify import VerificationPlan, verify_export
from milsdk.models import SETMIL, create_model
from milsdk.models.setmil import PMF, neighbourhoods

PMF_CONFIG = {
    "att_dim": 16,
    "set_n_heads": 2,
    "use_pmf": True,
    "pmf_n_heads": 2,
    "pmf_kernel_list": [[3, 3], [5, 5]],
    "pmf_stride_list": [[1, 1], [1, 1]],
    "pmf_padding_list": [[1, 1], [2, 2]],
    "pmf_dilation_list": [[1, 1], [1, 1]],
}


def _model(n_classes: int = 1, **config) -> SETMIL:
    torch.manual_seed(0)
    model = SETMIL((8,), **{**SETMIL.test_config, **config}, n_classes=n_classes)
    with torch.no_grad():  # the iRPE tables start at zero: make them matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _bag(n: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, 8, generator=gen), torch.rand(1, n, 2, generator=gen) * 20


def test_coords_are_required():
    X, _ = _bag()
    with pytest.raises(ValueError, match="coords"):
        _model()(X)
    with pytest.raises(ValueError, match="coords"):
        _model()(X, coords=torch.zeros(1, 12, 3))


@pytest.mark.parametrize("config", [{}, PMF_CONFIG], ids=["plain", "pmf"])
def test_translating_the_coords_changes_nothing(config):
    model = _model(3, **config)
    X, coords = _bag()
    logits, att = model(X, coords=coords, return_att=True)
    moved_logits, moved_att = model(X, coords=coords + torch.tensor([37.0, -11.0]), return_att=True)
    torch.testing.assert_close(moved_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moved_att, att, atol=1e-6, rtol=1e-5)
    # the positions matter: a different layout changes the output
    assert not torch.allclose(model(X, coords=coords.flip(-1)), logits, atol=1e-4)


def test_pmf_attention_is_a_distribution_over_the_instances():
    model = _model(**PMF_CONFIG)
    X, coords = _bag(10)
    X = torch.cat([X, torch.zeros(1, 4, 8)], dim=1)
    coords = torch.cat([coords, torch.zeros(1, 4, 2)], dim=1)
    mask = torch.tensor([[1] * 10 + [0] * 4], dtype=torch.uint8)
    _, att = model(X, mask, coords, return_att=True)
    assert (att[:, :10] > 0).all() and (att[:, 10:] == 0).all()
    weights = model.deployment_attention(att, mask)
    torch.testing.assert_close(weights.sum(1), torch.ones(1))


def test_neighbourhoods_equal_a_dense_unfold_with_cell_means():
    torch.manual_seed(3)
    B, N, E = 2, 15, 3
    X = torch.randn(B, N, E)
    cells = torch.randint(0, 6, (B, N, 2))
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[1, 11:] = False
    got = neighbourhoods(X, keep, cells, [(3, 3), (5, 3)], [(1, 1), (1, 2)], 2, 2)
    for (kh, kw), (dh, dw), out in zip([(3, 3), (5, 3)], [(1, 1), (1, 2)], got):
        for b in range(B):
            grid = torch.zeros(E, 6, 6)
            count = torch.zeros(6, 6)
            for i in range(N):
                if keep[b, i]:
                    r, c = cells[b, i].tolist()
                    grid[:, r, c] += X[b, i]
                    count[r, c] += 1
            grid = grid / count.clamp_min(1)
            pad = ((kh - 1) // 2 * dh, (kw - 1) // 2 * dw)
            dense = torch.nn.functional.unfold(grid[None], (kh, kw), dilation=(dh, dw), padding=pad)[0]
            for i in range(N):
                if keep[b, i]:
                    r, c = cells[b, i].tolist()
                    torch.testing.assert_close(out[b, i], dense[:, r * 6 + c])


def test_pmf_refuses_branches_that_do_not_keep_the_grid():
    with pytest.raises(ValueError, match="keep the grid"):
        PMF(8, att_dim=8, kernel_list=[(3, 3)], stride_list=[(2, 2)], padding_list=[(1, 1)], dilation_list=[(1, 1)])
    with pytest.raises(ValueError, match="one entry per branch"):
        PMF(8, att_dim=8, kernel_list=[(3, 3)], stride_list=[], padding_list=[(1, 1)], dilation_list=[(1, 1)])


def test_registry_and_json_config():
    model = create_model("SETMIL", in_shape=(8,), **PMF_CONFIG)
    assert isinstance(model, SETMIL) and model.extra_inputs == ("coords",)
    assert model.config["pmf_kernel_list"] == [[3, 3], [5, 5]]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_pmf_export_passes_verification(fmt, tmp_path):
    model = _model(3, **PMF_CONFIG)
    path = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    (export_onnx if fmt == "onnx" else export_torchscript)(model, path)
    report = verify_export(path, model, plan=VerificationPlan.quick())
    assert report.passed, report.summary()


# ---- grid="all_cells": torchmil's dense grid (equality with torchmil: tests/models/test_from_torchmil.py) -------


def test_all_cells_grid_depends_on_the_origin_and_the_empty_cells():
    """Unlike the default, torchmil's grid starts at cell (0, 0): moving a bag adds empty cells, which are tokens."""
    model = _model(grid="all_cells")
    X, coords = _bag(6)
    coords = coords.floor()
    logits = model(X, coords=coords)
    assert not torch.allclose(model(X, coords=coords + 3.0), logits, atol=1e-4)
    default = _model()
    torch.testing.assert_close(default(X, coords=coords + 3.0), default(X, coords=coords), atol=1e-5, rtol=1e-5)


def test_all_cells_refuses_bad_options_and_negative_coords():
    from milsdk.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match="grid='dense', expected one of"):
        SETMIL((8,), grid="dense")
    X, coords = _bag(4)
    with pytest.raises(ValueError, match="coords must be >= 0"):
        _model(grid="all_cells")(X, coords=coords - 5.0)


def test_all_cells_onnx_is_refused_in_one_line_and_torchscript_verifies(tmp_path):
    from milsdk.errors import ModelConfigError
    from milsdk.export.verify import BatchCase, PaddingProbe

    torch.manual_seed(0)  # default initialisation: logits O(1) (float32 rounding over ~10^4 tokens is relative)
    model = SETMIL((8,), **{**SETMIL.test_config, **PMF_CONFIG}, grid="all_cells").eval()
    with pytest.raises(ModelConfigError, match=r"^SETMIL: grid='all_cells' cannot be exported to ONNX"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    export_torchscript(model, tmp_path / "m.pt")
    # small bags: a plan of seconds (an all-cells model pays for the grid's area)
    plan = VerificationPlan(cases=(BatchCase(1, 1), BatchCase(2, 3, mixed=True)), padding=(PaddingProbe(1, 4, 2),),
                            scan=(1, 2))
    report = verify_export(tmp_path / "m.pt", model, plan=plan)
    assert report.passed, report.summary()


def test_export_of_an_all_cells_checkpoint_takes_the_profiles_other_format_unless_onnx_is_asked_for(tmp_path):
    from milsdk.errors import ModelConfigError
    from milsdk.export.api import export_checkpoint
    from milsdk.export.verify import BatchCase, PaddingProbe
    from milsdk.utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(SETMIL((8,), **SETMIL.test_config, grid="all_cells").eval(), tmp_path / "setmil.ckpt")
    plan = VerificationPlan(cases=(BatchCase(1, 1), BatchCase(2, 3, mixed=True)), padding=(PaddingProbe(1, 4, 2),),
                            scan=(1, 2))
    said = []
    result = export_checkpoint(ckpt, tmp_path / "out", plan=plan, progress=said.append)  # cpu: onnx + torchscript
    assert [a.format for a in result.artifacts] == ["torchscript"] and result.artifacts[0].report.passed
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert any(m.startswith("no ONNX for this model (grid='all_cells' cannot") for m in said)
    for formats, triton in ((("onnx",), None), (None, tmp_path / "repo")):
        with pytest.raises(ModelConfigError, match="grid='all_cells' cannot be exported to ONNX"):
            export_checkpoint(ckpt, tmp_path / "asked", formats, triton_repo=triton, plan=plan)
        assert not (tmp_path / "asked").exists() and not (tmp_path / "repo").exists()
