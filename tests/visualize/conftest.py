"""Helpers for the visualize tests: read a PNG back and find a data point's pixel inside a figure's axes."""

import numpy as np
import pytest


@pytest.fixture
def read_png():
    """Read a PNG as (H, W, 3) float RGB in 0-255."""
    from matplotlib.image import imread

    def read(path) -> np.ndarray:
        return imread(str(path))[..., :3].astype(np.float64) * 255.0

    return read


@pytest.fixture
def pixel_of():
    """(row, col) in the saved PNG of the data point (x, y) of the axes labelled ``label`` in ``fig``."""

    def locate(fig, label: str, x: float, y: float) -> tuple[int, int]:
        fig.canvas.draw()
        (ax,) = [a for a in fig.axes if a.get_label() == label]
        dx, dy = ax.transData.transform((x, y))
        height = round(fig.get_size_inches()[1] * fig.dpi)
        return int(height - dy), int(dx)

    return locate
