import numpy as np
import pytest

from milsdk.visualize import VisualizeError, draw_heatmap_wsi, draw_patches_contour, patches_to_canvas

RED = np.array([0xD6, 0x27, 0x28], dtype=np.float64)  # tab:red, the default max_color
GREEN = np.array([0x2C, 0xA0, 0x2C], dtype=np.float64)  # tab:green, the default min_color


def _patch(value: int, ps: int = 4) -> np.ndarray:
    return np.full((ps, ps, 3), value, dtype=np.uint8)


def test_patches_to_canvas_size_and_exact_placement():
    rows, cols = np.array([0, 2, 1]), np.array([1, 0, 3])
    canvas = patches_to_canvas([_patch(10), _patch(20), _patch(30)], rows, cols, 4)
    assert canvas.shape == (3 * 4, 4 * 4, 3) and canvas.dtype == np.uint8
    expected = np.full((12, 16, 3), 255, dtype=np.uint8)
    expected[0:4, 4:8] = 10
    expected[8:12, 0:4] = 20
    expected[4:8, 12:16] = 30
    np.testing.assert_array_equal(canvas, expected)


def test_patches_to_canvas_grayscale_and_empty():
    gray = np.arange(9, dtype=np.uint8).reshape(3, 3)
    canvas = patches_to_canvas([gray], np.array([1]), np.array([0]), 3)
    assert canvas.shape == (6, 3, 3)
    np.testing.assert_array_equal(canvas[3:, :, 1], gray)
    empty = patches_to_canvas([], np.array([], dtype=int), np.array([], dtype=int), 5)
    np.testing.assert_array_equal(empty, np.full((5, 5, 3), 255, dtype=np.uint8))


@pytest.mark.parametrize(
    "patches, rows, cols, message",
    [
        ([_patch(0, 3)], [0], [0], r"patches_list\[0\]: expected shape \(4, 4, 3\)"),
        ([_patch(0)], [0, 1], [0, 1], "1 patches but 2 grid positions"),
        ([_patch(0)], [-1], [0], "non-negative integer"),
        ([_patch(0)], [0.5], [0], "non-negative integer"),
    ],
)
def test_patches_to_canvas_rejects_bad_input(patches, rows, cols, message):
    with pytest.raises(VisualizeError, match=message):
        patches_to_canvas(patches, np.array(rows), np.array(cols), 4)


def test_contour_thickness_inside_and_on_the_border():
    ps, h = 20, 2  # contour_prop 0.1 -> half-width round(0.1 * 20) = 2
    canvas = np.full((40, 60, 3), 200, dtype=np.uint8)
    out = draw_patches_contour(canvas, np.array([0, 0]), np.array([0, 1]), ps, contour_prop=0.1)
    black = np.all(out == 0, axis=2)
    np.testing.assert_array_equal(canvas, 200)  # input untouched
    row = black[10]  # a row through the middle of both patches
    assert row[:h].all() and not row[h]  # canvas border: h pixels
    assert row[ps - h : ps + h].all() and not row[ps - h - 1] and not row[ps + h]  # shared edge: 2h pixels
    assert row[2 * ps - h : 2 * ps + h].all() and not row[2 * ps + h :].any()  # outer right edge of patch 1
    col = black[:, 30]
    assert (
        col[:h].all() and col[ps - h : ps + h].all() and not col[h : ps - h].any() and not col[ps + h :].any()
    )
    assert black[ps - h : ps + h, 0 : 2 * ps + h].all()  # the frame is closed at the corners
    assert not black[25:, :].any()  # row 1 of the grid has no patch


def test_contour_default_is_about_ten_percent_of_a_patch():
    out = draw_patches_contour(np.full((100, 100), 9, np.uint8), np.array([0]), np.array([0]), 100)
    assert np.all(out[50, :5] == 0) and out[50, 5] == 9  # h = round(0.05 * 100) = 5 on the border


def test_heatmap_blend_colours_exactly():
    canvas = np.full((4, 8, 3), 255, dtype=np.uint8)
    out = draw_heatmap_wsi(canvas, np.array([1.0, 0.0]), 4, np.array([0, 0]), np.array([0, 1]))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :4], np.broadcast_to(np.rint(0.5 * RED + 0.5 * 255), (4, 4, 3)))
    np.testing.assert_array_equal(out[:, 4:], np.broadcast_to(np.rint(0.5 * GREEN + 0.5 * 255), (4, 4, 3)))
    np.testing.assert_array_equal(canvas, 255)


def test_heatmap_mixes_colours_by_value_and_keeps_float_dtype():
    canvas = np.zeros((2, 2, 3), dtype=np.float32)
    out = draw_heatmap_wsi(
        canvas,
        np.array([0.25]),
        2,
        np.array([0]),
        np.array([0]),
        alpha=1.0,
        max_color=(1.0, 0.0, 0.0),
        min_color=(0.0, 0.0, 1.0),
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0.25 * 255, 0, 0.75 * 255], rtol=1e-6)


def test_heatmap_blank_uses_value_as_opacity():
    canvas = np.full((2, 6, 3), 100, dtype=np.uint8)
    out = draw_heatmap_wsi(
        canvas,
        np.array([0.0, 0.5, 1.0]),
        2,
        np.zeros(3, int),
        np.arange(3),
        max_color="tab:red",
        min_color="blank",
    )
    np.testing.assert_array_equal(out[:, 0:2], 100)
    np.testing.assert_array_equal(out[0, 2], np.rint(0.5 * RED + 50))
    np.testing.assert_array_equal(out[0, 4], RED)


def test_heatmap_rejects_values_outside_unit_interval_and_patches_outside_canvas():
    canvas = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(VisualizeError, match="normalize_attention"):
        draw_heatmap_wsi(canvas, np.array([1.5]), 4, np.array([0]), np.array([0]))
    with pytest.raises(VisualizeError, match="outside the canvas"):
        draw_heatmap_wsi(canvas, np.array([0.5]), 4, np.array([1]), np.array([0]))
