"""Scribble simulation: the minimum stroke length for small round structures (ScribbleSettings.min_length)."""

import numpy as np

from lib.data.scribbles import ScribbleSettings, simulate_scribbles


def _blob_volume() -> np.ndarray:
    """A small sphere (radius 3 voxels, class 1) in a long bar of class 2 (whose skeleton is a long line)."""
    labels = np.zeros((40, 40, 9), np.uint8)
    labels[2:38, 14:27, :] = 2
    x, y, z = np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij")
    labels[(x - 20) ** 2 + (y - 20) ** 2 + 4 * (z - 4) ** 2 <= 9] = 1
    return labels


def test_small_blob_gets_a_segment_not_a_dot():
    labels = _blob_volume()
    dots = simulate_scribbles(labels, 2, seed=0, settings=ScribbleSettings(slice_fraction=1.0))
    lines = simulate_scribbles(labels, 2, seed=0, settings=ScribbleSettings(slice_fraction=1.0, min_length=5))
    for z in np.flatnonzero((labels == 1).any(axis=(0, 1))):
        assert (dots[..., z] == 1).sum() <= 2
        assert (lines[..., z] == 1).sum() >= 5
    assert (labels[lines == 1] == 1).all()  # still inside the structure
    assert (labels[lines == 3] == 0).all()


def test_long_strokes_are_unchanged():
    labels = _blob_volume()
    base = ScribbleSettings(slice_fraction=1.0)
    plain = simulate_scribbles(labels, 2, seed=3, settings=base)
    with_minimum = simulate_scribbles(labels, 2, seed=3, settings=ScribbleSettings(slice_fraction=1.0, min_length=5))
    np.testing.assert_array_equal(plain == 2, with_minimum == 2)  # the bar's strokes are long already
