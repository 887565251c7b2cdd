"""torchmil SETMIL's T2TLayer and pyramid over dense maps: equal to torchmil 1.0.2's on a map, and a batch of maps
of different sizes gives each map's patches alone."""

from __future__ import annotations

import pytest
import torch

from milsdk.nn.transformers.grid_t2t import GridPMF, T2TLayer, patch_grid

torchmil_setmil = pytest.importorskip("torchmil.models.setmil")

C = 3


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("kwargs", [
    {},  # torchmil's defaults: kernel 3, padding 2 (the map grows)
    {"kernel_size": (3, 5), "stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "out_dim": 5},
    {"kernel_size": (1, 1), "padding": (0, 0), "use_mlp": False},
], ids=["defaults", "strided-dilated-projected", "1x1-no-mlp"])
def test_equals_torchmil_on_a_map(kwargs):
    kwargs = {"att_dim": 8, "n_heads": 2, **kwargs}
    reference = torchmil_setmil.T2TLayer(C, **{"out_dim": 8, **kwargs}).eval()
    _randomise(reference)
    layer = T2TLayer(C, **kwargs).eval()
    state = reference.state_dict()
    if not kwargs.get("use_mlp", True):  # torchmil's Layer builds norm2 also without the MLP
        state = {k: v for k, v in state.items() if ".norm2." not in k}
    layer.load_state_dict(state)
    X = torch.randn(2, C, 5, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(X)
        got = layer(X)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    L_h, L_w = patch_grid(torch.tensor([5, 6]), layer.kernel, layer.stride, layer.padding, layer.dilation).tolist()
    assert got.shape == (2, L_h * L_w, kwargs.get("out_dim", 8))


def test_out_dim_none_is_att_dim():
    """torchmil documents None as att_dim * kh * kw but builds Linear(att_dim, None), which raises."""
    with pytest.raises(TypeError):
        torchmil_setmil.T2TLayer(C, att_dim=8, n_heads=2)
    layer = T2TLayer(C, att_dim=8, n_heads=2)
    assert isinstance(layer.out_proj, torch.nn.Identity)
    assert layer(torch.randn(1, C, 2, 2)).shape == (1, 16, 8)  # (2 + 2 * 2 - 2)^2 patches


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)])
def test_a_batch_of_maps_gives_each_map_alone(stride):
    torch.manual_seed(1)
    layer = T2TLayer(C, att_dim=8, n_heads=2, kernel_size=(3, 3), stride=stride, padding=(1, 1)).eval()
    _randomise(layer, 1)
    sizes = torch.tensor([[2, 3], [5, 5], [1, 1]])
    X = torch.zeros(3, C, 5, 5)
    alone = []
    with torch.no_grad():
        for b, (h, w) in enumerate(sizes.tolist()):
            X[b, :, :h, :w] = torch.randn(C, h, w)
            alone.append(layer(X[b : b + 1, :, :h, :w])[0])
        batch = layer(X, sizes)
    for b, own in enumerate(alone):
        torch.testing.assert_close(batch[b, : own.shape[0]], own, atol=1e-5, rtol=0)


def test_pyramid_equals_torchmil_pmf_and_batches():
    config = {"att_dim": 8, "kernel_list": [(3, 3), (5, 5)], "stride_list": [(1, 1), (1, 1)],
              "padding_list": [(1, 1), (2, 2)], "dilation_list": [(1, 1), (1, 1)], "n_heads": 2}
    reference = torchmil_setmil.PMF(C, out_dim=6, **config).eval()
    _randomise(reference, 2)
    pmf = GridPMF(C, out_dim=6, **config).eval()
    pmf.load_state_dict(reference.state_dict())
    X = torch.randn(2, C, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(pmf.forward_map(X), reference(X), atol=1e-5, rtol=0)
        # from instances: two bags of sides 3 and 2 (padding instances create no cell)
        H = torch.randn(2, 4, C)
        cells = torch.tensor([[[0, 0], [2, 1], [1, 2], [9, 9]], [[1, 1], [0, 1], [0, 0], [9, 9]]])
        keep = torch.tensor([[True, True, True, False], [True, True, False, False]])
        out = pmf(H, keep, cells)
        for b, side in enumerate((3, 2)):
            grid = torch.zeros(1, C, side, side)
            for i in range(4):
                if keep[b, i]:
                    grid[0, :, cells[b, i, 0], cells[b, i, 1]] = H[b, i]
            torch.testing.assert_close(out[b, : side * side], reference(grid)[0], atol=1e-5, rtol=0)
    assert pmf.n_tokens(torch.tensor([3, 2])).item() == 6


def test_pyramid_refuses_branches_with_other_patch_counts():
    with pytest.raises(ValueError, match="different numbers of patches"):
        GridPMF(C, att_dim=8, kernel_list=[(3, 3), (3, 3)], stride_list=[(1, 1), (2, 2)],
                padding_list=[(1, 1), (1, 1)], dilation_list=[(1, 1), (1, 1)], n_heads=2)
    with pytest.raises(ValueError, match="one entry per branch"):
        GridPMF(C, att_dim=8, kernel_list=[(3, 3)], stride_list=[], padding_list=[(1, 1)], dilation_list=[(1, 1)])


def test_scripts():
    layer = T2TLayer(C, att_dim=8, n_heads=2).eval()
    scripted = torch.jit.script(layer)
    X, sizes = torch.randn(2, C, 4, 4), torch.tensor([[4, 4], [2, 3]])
    torch.testing.assert_close(scripted(X, sizes), layer(X, sizes))
