import numpy as np
import pytest

from milsdk.visualize import COLORMAPS, VisualizeError, apply_colormap, colormap_lut, to_rgb


def test_named_hex_and_float_colours():
    np.testing.assert_allclose(to_rgb("tab:red"), [0.839, 0.153, 0.157], atol=1e-3)
    np.testing.assert_allclose(to_rgb("tab:green"), [0.173, 0.627, 0.173], atol=1e-3)
    np.testing.assert_allclose(to_rgb("#ff8000"), [1.0, 128 / 255, 0.0])
    np.testing.assert_allclose(to_rgb((0.1, 0.2, 0.3)), [0.1, 0.2, 0.3])
    for bad in ("tab:nope", "#zzzzzz", (1.0, 2.0, 0.0), (0.5, 0.5)):
        with pytest.raises(VisualizeError):
            to_rgb(bad)


@pytest.mark.parametrize("cmap", COLORMAPS)
def test_embedded_maps_match_matplotlib(cmap):
    import matplotlib

    reference = matplotlib.colormaps[cmap](np.arange(256))[:, :3]
    ours = colormap_lut(cmap, 256)
    assert np.abs(ours - reference).max() * 255 <= 3.2
    np.testing.assert_allclose(ours[[0, -1]], reference[[0, -1]], atol=0.5 / 255)  # exact ends


def test_apply_colormap_ends_clipping_and_shape():
    out = apply_colormap(np.array([[0.0, 1.0], [-3.0, 7.0]]), "viridis")
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [0x44, 0x01, 0x54])  # viridis(0)
    np.testing.assert_array_equal(out[0, 1], [0xFD, 0xE7, 0x25])  # viridis(1)
    np.testing.assert_array_equal(out[1], out[0])
    with pytest.raises(VisualizeError, match="finite"):
        apply_colormap(np.array([np.nan]))
    with pytest.raises(VisualizeError, match="unknown colour map 'jet'"):
        apply_colormap(np.zeros(2), "jet")
