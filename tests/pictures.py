"""Checks that a written PNG is a real picture: read back with matplotlib, a sensible size, not blank."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_picture(path: str | Path, min_width: int = 300, min_height: int = 200, min_colors: int = 8) -> np.ndarray:
    """Read `path` as an image and check it has some size and drawing in it; returns the pixels [H, W, C]."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))  # raises for anything that is not a readable PNG
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, f"{path}: {width}x{height} pixels"
    colors = np.unique(pixels.reshape(-1, pixels.shape[-1]).round(2), axis=0)
    assert len(colors) >= min_colors, f"{path}: {len(colors)} colours, a blank picture"
    background = np.mean(np.all(np.isclose(pixels, pixels[0, 0]), axis=-1))
    assert background < 0.98, f"{path}: {background:.1%} of the pixels are the background colour"
    return pixels
