import numpy as np
import pytest

from milsdk.visualize import VisualizeError, draw_heatmap_ctscan, draw_slices_contour, slices_to_canvas

RED = np.array([0xD6, 0x27, 0x28], dtype=np.float64)
GREEN = np.array([0x2C, 0xA0, 0x2C], dtype=np.float64)


def test_slices_left_to_right_exact_size():
    slices = [np.full((5, 5), v, dtype=np.uint8) for v in (10, 20, 30)]
    canvas = slices_to_canvas(slices, 5)
    assert canvas.shape == (5, 15, 3) and canvas.dtype == np.uint8
    for i, v in enumerate((10, 20, 30)):
        np.testing.assert_array_equal(canvas[:, 5 * i : 5 * (i + 1)], v)
    np.testing.assert_array_equal(slices_to_canvas([], 5), np.full((5, 5, 3), 255, np.uint8))
    with pytest.raises(VisualizeError, match=r"slices_list\[1\]"):
        slices_to_canvas([np.zeros((5, 5)), np.zeros((4, 4))], 5)


def test_separators_at_every_boundary_with_exact_thickness():
    canvas = np.full((20, 60, 3), 200, dtype=np.uint8)
    out = draw_slices_contour(canvas, 20, contour_prop=0.1)  # half-width 2
    black_cols = np.all(out == 0, axis=(0, 2))
    expected = np.zeros(60, bool)
    expected[[0, 1, 18, 19, 20, 21, 38, 39, 40, 41, 58, 59]] = True
    np.testing.assert_array_equal(black_cols, expected)
    assert np.all((out == 0) | (out == 200))
    np.testing.assert_array_equal(canvas, 200)


def test_heatmap_one_uniform_block_per_slice():
    canvas = np.full((4, 12, 3), 255, dtype=np.uint8)
    out = draw_heatmap_ctscan(canvas, np.array([1.0, 0.0, 0.5]), 4)
    assert out.dtype == np.uint8
    expected = [0.5 * RED + 127.5, 0.5 * GREEN + 127.5, 0.5 * (0.5 * RED + 0.5 * GREEN) + 127.5]
    for i, colour in enumerate(expected):
        np.testing.assert_array_equal(
            out[:, 4 * i : 4 * (i + 1)], np.broadcast_to(np.rint(colour), (4, 4, 3))
        )
    changes = np.flatnonzero(np.any(out[0, 1:] != out[0, :-1], axis=1)) + 1
    np.testing.assert_array_equal(changes, [4, 8])


def test_heatmap_fewer_values_leave_the_rest_and_more_is_an_error():
    canvas = np.full((2, 4, 3), 50, dtype=np.uint8)
    out = draw_heatmap_ctscan(canvas, np.array([1.0]), 2, alpha=1.0)
    np.testing.assert_array_equal(out[:, :2], np.broadcast_to(RED, (2, 2, 3)))
    np.testing.assert_array_equal(out[:, 2:], 50)
    with pytest.raises(VisualizeError, match="3 values for a canvas of 2 slices"):
        draw_heatmap_ctscan(canvas, np.zeros(3), 2)
    with pytest.raises(VisualizeError, match="multiple of 3"):
        draw_heatmap_ctscan(canvas, np.zeros(1), 3)
