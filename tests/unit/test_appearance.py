"""Appearance refinement: the voxels the walker is unsure of go to the class they look like."""

import numpy as np
from scipy.ndimage import gaussian_filter

from lib.scribbles.appearance import MIN_PRIOR, MIN_SURE_VOXELS, SURE, refine_unsure
from lib.scribbles.propagation import propagate


def band_case() -> tuple[np.ndarray, np.ndarray]:
    """Walker probabilities (3, 20, 6, 6) and a one-channel image: class 0 where x < 10 (dark), class 1
    where x >= 10 (bright). The walker is sure only away from the edge (x < 6, x >= 14) and, in the band
    between, leans the wrong way for x = 10..13 (0.6 class 0). Class 2 looks like class 1 but lies far
    away: the walker gives it 0.01 in the band."""
    rng = np.random.default_rng(0)
    image = np.zeros((1, 20, 6, 6), np.float32)
    image[0, 10:] = 1.0
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    probabilities = np.zeros((3, 20, 6, 6), np.float32)
    probabilities[0, :6], probabilities[1, :6] = 0.95, 0.05
    probabilities[1, 14:], probabilities[0, 14:] = 0.95, 0.05
    probabilities[0, 6:14], probabilities[1, 6:14], probabilities[2, 6:14] = 0.59, 0.40, 0.01
    probabilities[:, :, 5] = 0.0
    probabilities[2, :, 5] = 1.0  # class 2, sure, on the row y = 5
    image[0, :, 5] = 1.0
    return probabilities, image


def test_unsure_voxels_follow_the_appearance_of_the_sure_ones():
    probabilities, image = band_case()
    refined = refine_unsure(probabilities, image)
    labels = refined.argmax(axis=0)[:, :5]
    assert (probabilities.argmax(axis=0)[6:14, :5] == 0).all()  # the walker alone: all of the band class 0
    # the voxels either side of the edge (x = 9, 10) are a blend once smoothed (IMAGE_SIGMA): left out
    assert (labels[6:9] == 0).all() and (labels[11:14] == 1).all()
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)


def test_sure_voxels_are_kept_and_unlikely_classes_get_nothing():
    probabilities, image = band_case()
    refined = refine_unsure(probabilities, image)
    sure = probabilities.max(axis=0) >= SURE
    np.testing.assert_array_equal(refined[:, sure], probabilities[:, sure])
    assert (probabilities[2, 6:14, :5] < MIN_PRIOR).all()
    assert (refined[2, 6:14, :5] == 0).all()  # looks like class 2's sure voxels, but the walker rules it out


def test_a_class_with_too_few_sure_voxels_leaves_the_voxels_it_may_own_to_the_walker():
    probabilities, image = band_case()
    probabilities[1, 14:, :5], probabilities[0, 14:, :5] = 0.6, 0.4  # class 1 unsure where it lies...
    probabilities[1, 19, :2, :4], probabilities[0, 19, :2, :4] = 0.95, 0.05  # ...but for 8 voxels
    assert (probabilities[1].max(axis=(1, 2)) >= SURE).sum() == 1 and (probabilities[1] >= SURE).sum() < MIN_SURE_VOXELS
    refined = refine_unsure(probabilities, image)
    unsure = probabilities.max(axis=0) < SURE
    assert unsure[6:, :5].sum() > 100
    np.testing.assert_array_equal(refined[:, unsure], probabilities[:, unsure])


def test_all_sure_or_all_unsure_is_left_as_is():
    probabilities, image = band_case()
    all_sure = np.zeros_like(probabilities)
    all_sure[0] = 1.0
    np.testing.assert_array_equal(refine_unsure(all_sure, image), all_sure)
    all_unsure = np.full_like(probabilities, 1 / 3)
    np.testing.assert_array_equal(refine_unsure(all_unsure, image), all_unsure)


def test_the_refined_propagation_recovers_more_of_an_organ_behind_a_blurred_edge():
    """A ball (class 2) in an organ (class 1): faint but sharp on the first channel (CT-like), bright but
    blurred on the second (an MR resampled from a coarser grid)."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(28)] * 3, indexing="ij")
    r = np.sqrt((x - 13.5) ** 2 + (y - 13.5) ** 2 + (z - 13.5) ** 2)
    truth = np.where(r <= 6, 2, np.where(r <= 11, 1, 0))
    ct = np.choose(truth, [-0.5, 0.1, 0.15]) + rng.normal(0, 0.04, r.shape)
    mr = gaussian_filter(np.choose(truth, [1.0, 0.0, 3.0]), 1.0) + rng.normal(0, 0.05, r.shape)
    strokes = np.zeros(r.shape, np.int64)
    strokes[(np.abs(r - 8.5) < 0.5) & (z % 2 == 1)] = 1
    strokes[(r < 4.0) & (z % 4 == 1)] = 2
    strokes[(r > 12.5) & (z % 4 == 1)] = 3
    image = np.stack([ct, mr]).astype(np.float32)

    def mean_dice(refine: bool) -> float:
        labels = propagate(image, strokes, 2, (1.0, 1.0, 1.0), refine=refine).argmax(axis=0)
        return np.mean(
            [2 * ((labels == k) & (truth == k)).sum() / ((labels == k).sum() + (truth == k).sum()) for k in (1, 2)]
        )

    assert mean_dice(True) > mean_dice(False) + 0.01
