import numpy as np
import pytest

from milsdk.visualize import (
    VisualizeError,
    apply_colormap,
    attention_canvas,
    attention_grid,
    grid_layout,
    normalize_attention,
)

COLD, HOT = apply_colormap(np.array([0.0, 1.0]), "viridis")


def test_pixel_coords_with_offset_infer_the_patch_step():
    # CLAM-style (x, y) top-left corners, 256 px patches, grid starting at (1000, 512), one cell missing.
    cells = np.array([(0, 0), (1, 0), (2, 0), (0, 1), (2, 1)])  # (col, row)
    coords = cells * 256 + np.array([1000, 512])
    layout = grid_layout(coords)
    assert layout.step == 256 and layout.shape == (2, 3) and layout.origin == (1000.0, 512.0)
    np.testing.assert_array_equal(layout.cols, cells[:, 0])
    np.testing.assert_array_equal(layout.rows, cells[:, 1])
    assert layout.extent == (1000.0, 1000.0 + 3 * 256, 512.0 + 2 * 256, 512.0)


def test_gcd_handles_gaps_and_explicit_patch_size_wins():
    coords = np.array([[0, 0], [512, 0], [1280, 256]])  # gcd of offsets is 256 although no two are 256 apart
    assert grid_layout(coords).shape == (2, 6)
    assert grid_layout(coords, patch_size=512).shape == (1, 3)
    assert grid_layout(np.array([[3, 7]])).shape == (1, 1)


def test_offset_tissue_regions_use_the_neighbour_spacing_and_sparse_grids_keep_the_gcd():
    # Two tissue regions patched (256 px) from different corners: the GCD of all offsets is 1.
    region_a = np.array([(x, 0) for x in range(0, 1024, 256)])
    region_b = np.array([(x, y) for x in range(37, 1061, 256) for y in (1003, 1259)])
    layout = grid_layout(np.concatenate([region_a, region_b]))
    assert layout.step == 256 and layout.shape == (5, 4)  # y 1003 -> row 3, x 37 + 768 -> col 3
    checkerboard = np.array([(c, r) for r in range(4) for c in range(6) if (r + c) % 2 == 0])
    assert grid_layout(checkerboard).step == 1  # neighbour spacing 2 is only twice the GCD


def test_non_integer_coordinates_use_the_smallest_difference():
    coords = np.array([[0.0, 0.0], [0.5, 0.0], [1.5, 0.5]])
    layout = grid_layout(coords)
    assert layout.step == 0.5 and layout.shape == (2, 4)


def test_attention_grid_values_and_nan_where_no_patch():
    coords = np.array([[0, 0], [2, 0], [2, 1]])
    grid = attention_grid(coords, np.array([0.1, 0.2, 0.3]))
    expected = np.array([[0.1, np.nan, 0.2], [np.nan, np.nan, 0.3]])
    np.testing.assert_array_equal(grid, expected)


def test_two_patches_in_one_cell_keep_the_larger_value():
    grid = attention_grid(np.array([[0, 0], [128, 0], [256, 0]]), np.array([0.7, 0.2, 0.4]), patch_size=256)
    np.testing.assert_array_equal(grid, [[0.7, 0.4]])


@pytest.mark.parametrize(
    "coords, att, patch_size, message",
    [
        (np.zeros((3, 3)), np.ones(3), None, r"shape \(N, 2\)"),
        (np.zeros((2, 2)), np.ones(3), None, "3 values but coords has 2 rows"),
        (np.array([[0, 0], [np.nan, 1]]), np.ones(2), None, "not finite"),
        (np.array([[0, 0], [1, 1]]), np.ones(2), -1, "positive"),
        (np.array([[0, 0], [10_000, 10_000], [1, 0]]), np.ones(3), None, "pass patch_size"),
    ],
)
def test_bad_coordinates(coords, att, patch_size, message):
    with pytest.raises(VisualizeError, match=message):
        attention_grid(coords, att, patch_size)


def test_all_attention_on_one_patch_is_the_only_hot_cell():
    coords = np.array([(c, r) for r in range(3) for c in range(4)]) * 224
    att = np.zeros(len(coords))
    att[6] = 1.0  # (x, y) = (2, 1)
    for method in ("rank", "minmax"):
        canvas = attention_canvas(attention_grid(coords, normalize_attention(att, method)))
        assert canvas.shape == (3, 4, 3) and canvas.dtype == np.uint8
        np.testing.assert_array_equal(canvas[1, 2], HOT)
        cold = np.ones((3, 4), bool)
        cold[1, 2] = False
        np.testing.assert_array_equal(canvas[cold], np.tile(COLD, (11, 1)))


def test_canvas_cell_size_places_cells_exactly_and_paints_background():
    grid = np.array([[0.0, np.nan], [1.0, 0.0]])
    canvas = attention_canvas(grid, cell_size=(2, 3), background=(1, 2, 3))
    assert canvas.shape == (4, 6, 3)
    np.testing.assert_array_equal(canvas[0:2, 3:6], np.broadcast_to([1, 2, 3], (2, 3, 3)))
    np.testing.assert_array_equal(canvas[2:4, 0:3], np.broadcast_to(HOT, (2, 3, 3)))
    np.testing.assert_array_equal(canvas[0:2, 0:3], np.broadcast_to(COLD, (2, 3, 3)))


def test_strip_has_one_column_block_per_slice():
    values = np.array([0.0, 1.0, 0.5, 0.25, 0.75])
    strip = attention_canvas(values[None, :], cell_size=(3, 7))
    assert strip.shape == (3, 35, 3)
    changes = np.flatnonzero(np.any(strip[1, 1:] != strip[1, :-1], axis=1)) + 1
    np.testing.assert_array_equal(changes, [7, 14, 21, 28])
    np.testing.assert_array_equal(strip[0, ::7], apply_colormap(values))
