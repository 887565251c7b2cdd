import subprocess
import sys
import textwrap

import numpy as np
import pytest

from milsdk.visualize import (
    VisualizeError,
    apply_colormap,
    ct_heatmap_figure,
    normalization_label,
    render_ct_heatmap,
    render_wsi_heatmap,
    save_bag_heatmap,
    wsi_heatmap_figure,
)

COLD, HOT = apply_colormap(np.array([0.0, 1.0]), "viridis").astype(np.float64)
TOL = 2.0  # 0-255 units: PNG round trip of colours we computed ourselves

# A 3 x 4 grid of 256 px patches from (512, 256), cell (row 2, col 3) missing; all attention on patch 5.
CELLS = [(c, r) for r in range(3) for c in range(4) if (r, c) != (2, 3)]
COORDS = np.array(CELLS) * 256 + np.array([512, 256])
HOT_INDEX = 5
ATT = np.zeros(len(CELLS))
ATT[HOT_INDEX] = 1.0


def _centre(col: int, row: int) -> tuple[float, float]:
    return 512 + 256 * (col + 0.5), 256 + 256 * (row + 0.5)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("normalize", ["rank", "minmax"])
def test_wsi_png_hot_cell_coldest_elsewhere_white_where_missing(tmp_path, read_png, pixel_of, normalize):
    path = render_wsi_heatmap(
        COORDS, ATT, tmp_path / "bag.png", title="bag: positive (p = 0.97)", normalize=normalize, dpi=80
    )
    img = read_png(path)
    fig = wsi_heatmap_figure(COORDS, ATT, title="bag: positive (p = 0.97)", normalize=normalize, dpi=80)
    assert img.shape[:2] == tuple(np.round(fig.get_size_inches()[::-1] * 80).astype(int))
    for i, (col, row) in enumerate(CELLS):
        r, c = pixel_of(fig, "heatmap", *_centre(col, row))
        np.testing.assert_allclose(img[r, c], HOT if i == HOT_INDEX else COLD, atol=TOL)
    r, c = pixel_of(fig, "heatmap", *_centre(3, 2))
    np.testing.assert_allclose(img[r, c], [255, 255, 255], atol=TOL)
    (cbar,) = [a for a in fig.axes if a.get_label() == "colorbar"]
    assert cbar.get_xlabel() == normalization_label(normalize)


def test_wsi_png_over_thumbnail_blends_with_alpha(tmp_path, read_png, pixel_of):
    thumb = np.full((96, 128, 3), 120, dtype=np.uint8)
    kwargs = {"thumbnail": thumb, "slide_size": (2048, 1536), "alpha": 0.5, "dpi": 80}
    img = read_png(render_wsi_heatmap(COORDS, ATT, tmp_path / "t.png", **kwargs))
    fig = wsi_heatmap_figure(COORDS, ATT, **kwargs)
    (ax,) = [a for a in fig.axes if a.get_label() == "heatmap"]
    assert ax.get_xlim() == (0.0, 2048.0) and ax.get_ylim() == (1536.0, 0.0)
    hot_col, hot_row = CELLS[HOT_INDEX]
    checks = [
        (_centre(hot_col, hot_row), 0.5 * HOT + 60),
        (_centre(0, 0), 0.5 * COLD + 60),
        (_centre(3, 2), 120),
        ((100.0, 100.0), 120),
    ]  # a missing cell and a point outside the grid
    for (x, y), expected in checks:
        r, c = pixel_of(fig, "heatmap", x, y)
        np.testing.assert_allclose(img[r, c], np.broadcast_to(expected, 3), atol=TOL)


def test_thumbnail_slide_size_is_inferred_keeping_its_aspect():
    fig = wsi_heatmap_figure(COORDS, ATT, thumbnail=np.zeros((50, 200, 3), np.uint8))
    (ax,) = [a for a in fig.axes if a.get_label() == "heatmap"]
    # Grid ends at x = 512 + 4 * 256 = 1536, y = 256 + 3 * 256 = 1024; a 4:1 thumbnail must then be 4096 wide.
    assert ax.get_xlim() == (0.0, 4096.0) and ax.get_ylim() == (1024.0, 0.0)


def test_ct_png_strip_changes_colour_exactly_at_slice_boundaries(tmp_path, read_png, pixel_of):
    att = np.array([0.05, 0.4, 0.1, 0.3, 0.15])  # rank -> 0, 1, 0.25, 0.75, 0.5
    expected = apply_colormap(np.array([0.0, 1.0, 0.25, 0.75, 0.5])).astype(np.float64)
    slices = np.random.default_rng(0).integers(0, 255, size=(5, 32, 32), dtype=np.uint8)
    img = read_png(render_ct_heatmap(att, tmp_path / "ct.png", slices=slices, title="scan", dpi=100))
    fig = ct_heatmap_figure(att, slices=slices, title="scan", dpi=100)
    assert {a.get_label() for a in fig.axes} == {"slices", "strip", "line", "colorbar"}
    for i, colour in enumerate(expected):
        np.testing.assert_allclose(img[pixel_of(fig, "strip", i + 0.5, 0.5)], colour, atol=TOL)
    row, start = pixel_of(fig, "strip", 0.0, 0.5)
    _, stop = pixel_of(fig, "strip", 5.0, 0.5)
    line = img[row, start + 2 : stop - 2]
    changes = start + 2 + np.flatnonzero(np.abs(np.diff(line, axis=0)).max(axis=1) > TOL) + 1
    boundaries = [pixel_of(fig, "strip", k, 0.5)[1] for k in range(1, 5)]
    assert len(changes) == 4 and np.abs(changes - boundaries).max() <= 1


def test_ct_without_slices_has_strip_and_line_only(tmp_path):
    fig = ct_heatmap_figure(np.array([0.2, 0.8]))
    assert {a.get_label() for a in fig.axes} == {"strip", "line", "colorbar"}
    (line,) = [a for a in fig.axes if a.get_label() == "line"]
    np.testing.assert_allclose(line.lines[0].get_ydata(), [0.2, 0.8])  # raw attention, not normalised
    with pytest.raises(VisualizeError, match=r"slices: expected \(2, h, w\)"):
        ct_heatmap_figure(np.array([0.2, 0.8]), slices=np.zeros((3, 8, 8)))


def test_save_bag_heatmap_dispatches_and_names_the_file(tmp_path, read_png):
    wsi = save_bag_heatmap(tmp_path / "maps", "slides/TCGA 01.h5", ATT, coords=COORDS, title="p = 0.9")
    ct = save_bag_heatmap(tmp_path / "maps", "scan_7", np.array([0.1, 0.9, 0.3]))
    assert wsi == tmp_path / "maps" / "slides_TCGA_01.h5.png" and ct == tmp_path / "maps" / "scan_7.png"
    h_wsi, w_wsi = read_png(wsi).shape[:2]
    fig = wsi_heatmap_figure(COORDS, ATT, title="p = 0.9")
    assert (h_wsi, w_wsi) == tuple(np.round(fig.get_size_inches()[::-1] * fig.dpi).astype(int))
    assert read_png(ct).shape[1] == round(ct_heatmap_figure(np.zeros(3)).get_size_inches()[0] * 150)
    with pytest.raises(VisualizeError, match="need coords"):
        save_bag_heatmap(tmp_path, "ct", np.ones(3), thumbnail=np.zeros((4, 4, 3), np.uint8))


def test_import_needs_neither_torch_nor_matplotlib():
    result = _run("""
        import sys
        import milsdk.visualize
        print(sorted(m for m in ("torch", "matplotlib") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_matplotlib_pngs_give_the_install_hint_and_arrays_work(tmp_path):
    result = _run(f"""
        import sys
        sys.modules["matplotlib"] = None  # makes `import matplotlib` raise ImportError
        import numpy as np
        import milsdk.visualize as viz
        from milsdk.errors import MILSDKError

        grid = viz.attention_grid(np.array([[0, 0], [1, 0]]), viz.normalize_attention(np.array([0.2, 0.8])))
        assert viz.attention_canvas(grid).shape == (1, 2, 3)
        canvas = viz.patches_to_canvas([np.zeros((2, 2, 3))], np.array([0]), np.array([1]), 2)
        assert canvas.shape == (2, 4, 3)
        assert viz.slices_to_canvas([np.zeros((2, 2))] * 3, 2).shape == (2, 6, 3)
        for call in (lambda: viz.render_wsi_heatmap(np.zeros((1, 2)), np.ones(1), "x.png"),
                     lambda: viz.render_ct_heatmap(np.ones(2), "x.png"),
                     lambda: viz.save_bag_heatmap({str(tmp_path / "out")!r}, "b", np.ones(2))):
            try:
                call()
            except viz.MatplotlibMissingError as exc:
                assert isinstance(exc, ImportError) and isinstance(exc, MILSDKError)
                print(exc)
            else:
                raise SystemExit("no error")
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all('pip install "milsdk[viz]"' in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_large_grid_never_drops_the_single_hot_patch(tmp_path, read_png, pixel_of):
    coords = np.array([(c, r) for r in range(3) for c in range(900)])
    att = np.zeros(len(coords))
    att[900 + 451] = 1.0  # row 1, column 451
    img = read_png(render_wsi_heatmap(coords, att, tmp_path / "wide.png", dpi=100))
    fig = wsi_heatmap_figure(coords, att, dpi=100)
    assert fig.get_size_inches()[0] * 100 >= 2 * 900  # the figure grew: at least 2 px per cell
    np.testing.assert_allclose(img[pixel_of(fig, "heatmap", 451.5, 1.5)], HOT, atol=TOL)
    np.testing.assert_allclose(img[pixel_of(fig, "heatmap", 449.5, 1.5)], COLD, atol=TOL)
