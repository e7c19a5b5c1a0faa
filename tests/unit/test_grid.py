"""The working grid and the way back: exact for any orientation, thin strokes survive, labels restored."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from lib.labels import IGNORE
from lib.transforms import grid
from lib.transforms.grid import (
    class_argmax,
    resize_dense,
    resize_image,
    resize_strokes,
    restore_labels,
    working_shape,
)


def oblique_affine() -> torch.Tensor:
    """0.8 x 0.8 x 2.5 mm voxels, axes rotated 30 degrees about z and flipped in y."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rotation = np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.8, 2.5])
    affine[:3, 3] = [-40.0, 12.0, 7.5]
    return torch.tensor(affine)


def test_working_grid_keeps_orientation_and_field_of_view():
    image = MetaTensor(torch.rand(1, 60, 50, 12), affine=oblique_affine())
    shape = working_shape(image.shape[1:], (0.8, 0.8, 2.5), (2.4, 2.4, 2.5))
    assert shape == (20, 17, 12)
    resized = resize_image(image, shape)
    affine = resized.affine.numpy()
    # same axis directions, spacing scaled by n_old / n_new
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(directions, oblique_affine().numpy()[:3, :3] / [0.8, 0.8, 2.5], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [2.4, 0.8 * 50 / 17, 2.5], atol=1e-9)
    # the first voxel's corner (not its centre) stays where it was: the field of view is the same
    corner_old = oblique_affine().numpy() @ [-0.5, -0.5, -0.5, 1]
    corner_new = affine @ [-0.5, -0.5, -0.5, 1]
    np.testing.assert_allclose(corner_new, corner_old, atol=1e-9)


def test_box_filter_keeps_the_mean_when_shrinking():
    image = MetaTensor(torch.rand(1, 12, 12, 12), affine=torch.eye(4, dtype=torch.float64))
    assert torch.isclose(resize_image(image, (4, 4, 4)).mean(), image.mean(), atol=1e-5)


def test_a_one_voxel_stroke_survives_downsampling_and_classes_win_over_background():
    strokes = torch.zeros(1, 9, 9, 9, dtype=torch.int64)
    strokes[0, 4, 4, :] = 2  # a thin line of class 2
    strokes[0, 3:6, 3:6, 0] = 5  # background strokes (K + 1 = 5) touching the line's first voxels
    small = resize_strokes(strokes, (3, 3, 3), background=5)
    assert small[0, 1, 1].tolist() == [2, 2, 2]  # every block the line crosses, the class where both meet
    assert (small == 5).sum() == 0 or small[0, 1, 1, 0] == 2
    assert set(torch.unique(small).tolist()) <= {0, 2, 5}


def test_dense_labels_move_by_nearest_neighbour_and_keep_ignore():
    label = torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    label[0, 2:] = 3
    label[0, 0, 0, 0] = IGNORE
    small = resize_dense(label, (2, 2, 2))
    assert small[0, 1].unique().tolist() == [3] and small[0, 0, 1, 1].item() == 0
    assert resize_dense(label, (8, 8, 8))[0, 0, 0, 0].item() == IGNORE


def test_restored_labels_have_the_reference_shape_and_follow_the_scores():
    # two classes split at the middle of the last axis, on a 4 x 4 x 4 working grid
    scores = torch.zeros(2, 4, 4, 4)
    scores[1, :, :, 2:] = 1.0
    scores[0, :, :, :2] = 1.0
    labels = restore_labels(scores, (9, 10, 11), rows_per_chunk=2)
    assert labels.shape == (9, 10, 11) and labels.dtype == np.uint8
    # linear interpolation puts the boundary at the middle of the field of view
    assert (labels[:, :, :5] == 0).all() and (labels[:, :, 6:] == 1).all()
    # the same grid back: argmax unchanged
    np.testing.assert_array_equal(restore_labels(scores, (4, 4, 4)), scores.argmax(0).numpy())


def test_class_argmax_is_torchs_argmax_with_the_first_class_on_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (5, 6, 7, 4), generator=generator).float()  # many ties
    expected = scores.argmax(dim=0)
    labels = class_argmax(scores)
    assert labels.dtype == torch.uint8 and (labels.long() == expected).all()
    assert class_argmax(torch.ones(3, 2, 2, 2)).unique().tolist() == [0]


@pytest.mark.parametrize("dense_above", [0.0, 1.0])  # every voxel interpolated / only unsure ones
@pytest.mark.parametrize("shape", [(13, 6, 17), (40, 33, 9)])
def test_restored_labels_are_the_argmax_of_the_full_linear_interpolation(shape, dense_above, monkeypatch):
    # noisy scores make most corners disagree, smooth ones only a boundary band: either way, and by either
    # path, the labels are torch's trilinear interpolation (align_corners=False) then argmax, voxel for voxel
    monkeypatch.setattr(grid, "DENSE_ABOVE", dense_above)
    generator = torch.Generator().manual_seed(0)
    noisy = torch.rand(4, 7, 5, 8, generator=generator)
    smooth = torch.stack([torch.linspace(0, 1, 7)[:, None, None].expand(7, 5, 8) * k for k in (1.0, 2.0, -1.0)])
    for scores in (noisy, smooth + 0.4 * noisy[:3]):
        full = F.interpolate(scores[None], size=shape, mode="trilinear", align_corners=False)[0]
        np.testing.assert_array_equal(restore_labels(scores, shape, rows_per_chunk=1), full.argmax(0).numpy())
