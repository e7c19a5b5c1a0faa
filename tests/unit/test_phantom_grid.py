"""Phantoms on a coarser grid (make_case's grid_scale): same anatomy and field of view, fewer voxels."""

import numpy as np
import pytest

from lib.data.phantoms import DEMO_LABELS, make_case, scaled_grid


def test_half_grid_keeps_the_field_of_view_and_the_anatomy():
    full, half = make_case(7), make_case(7, grid_scale=0.5)
    assert half.ct.shape == tuple(n // 2 for n in full.ct.shape)
    full_spacing = np.linalg.norm(full.ct_affine[:3, :3], axis=0)
    half_spacing = np.linalg.norm(half.ct_affine[:3, :3], axis=0)
    np.testing.assert_allclose(half_spacing, 2 * full_spacing)
    extent = lambda case, spacing: np.asarray(case.ct.shape) * spacing  # noqa: E731
    np.testing.assert_allclose(extent(half, half_spacing), extent(full, full_spacing))
    assert half.mr.shape != full.mr.shape and half.mr.shape != half.ct.shape
    for class_id in DEMO_LABELS.values():  # organ volumes in mm^3 agree: the same anatomy
        volume_full = (full.truth == class_id).sum() * np.prod(full_spacing)
        volume_half = (half.truth == class_id).sum() * np.prod(half_spacing)
        assert volume_half == pytest.approx(volume_full, rel=0.35)


def test_default_grid_is_unchanged():
    np.testing.assert_array_equal(make_case(3).truth, make_case(3, grid_scale=1.0).truth)
    assert scaled_grid((96, 96, 48), (3.5, 3.5, 5.0), 1.0) == ((96, 96, 48), (3.5, 3.5, 5.0))
    with pytest.raises(ValueError, match="grid_scale"):
        scaled_grid((4, 4, 4), (1.0, 1.0, 1.0), 0)
