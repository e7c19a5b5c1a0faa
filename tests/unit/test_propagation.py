"""Random-walker propagation: strokes carried to the edges the images show, air as background."""

import numpy as np

from lib.scribbles.propagation import background_seeds, keep_strokes, propagate
from lib.transforms.intensity import hu_to_normalized


def two_blobs() -> np.ndarray:
    """(1, 24, 24, 8): a bright square (class 1) and a dark square (class 2) on a mid-grey background."""
    image = np.full((24, 24, 8), 0.0, np.float32)
    image[2:10, 2:10] = 2.0
    image[14:22, 14:22] = -2.0
    return image[None] + np.random.default_rng(0).normal(0, 0.05, (1, 24, 24, 8)).astype(np.float32)


def test_strokes_spread_to_their_regions_and_stop_at_edges():
    strokes = np.zeros((24, 24, 8), np.int64)
    strokes[5, 5, 4] = 1
    strokes[18, 18, 4] = 2
    strokes[12, 2, 4] = 3  # K + 1: a background stroke
    probabilities = propagate(two_blobs(), strokes, num_classes=2, spacing=(1.0, 1.0, 2.0))
    assert probabilities.shape == (3, 24, 24, 8)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-3)
    labels = probabilities.argmax(axis=0)
    assert (labels[2:10, 2:10] == 1).mean() > 0.95
    assert (labels[14:22, 14:22] == 2).mean() > 0.95
    assert (labels[12, :, :] == 0).mean() > 0.9


def test_a_class_without_strokes_gets_zero_and_no_strokes_means_background():
    strokes = np.zeros((24, 24, 8), np.int64)
    strokes[5, 5, 4] = 1
    strokes[12, 2, 4] = 3
    probabilities = propagate(two_blobs(), strokes, num_classes=2, spacing=(1.0, 1.0, 1.0))
    assert probabilities[2].max() == 0.0
    empty = propagate(two_blobs(), np.zeros((24, 24, 8), np.int64), num_classes=2, spacing=(1.0, 1.0, 1.0))
    assert (empty[0] == 1).all() and (empty[1:] == 0).all()


def test_a_companion_without_data_does_not_cut_a_region():
    image = np.concatenate([two_blobs(), two_blobs()])
    image[1, :, 6:] = np.nan  # the second modality ends in the middle of the bright square
    strokes = np.zeros((24, 24, 8), np.int64)
    strokes[5, 3, 4] = 1
    strokes[12, 2, 4] = 3
    labels = propagate(image, strokes, num_classes=1, spacing=(1.0, 1.0, 1.0)).argmax(axis=0)
    assert (labels[2:10, 2:10] == 1).mean() > 0.95


def test_air_seeds_only_for_ct():
    reference = np.full((4, 4, 4), hu_to_normalized(40.0), np.float32)
    reference[0] = hu_to_normalized(-1000.0)
    seeds = background_seeds(reference, "ct")
    assert seeds[0].all() and not seeds[1:].any()
    assert background_seeds(reference, "mr") is None


def test_strokes_are_kept_as_drawn():
    labels = np.ones((3, 3, 3), np.uint8)  # the model says class 1 everywhere
    strokes = np.zeros((3, 3, 3), np.int64)
    strokes[0, 0, 0] = 2  # a class-2 stroke
    strokes[1, 1, 1] = 3  # K + 1 = 3: a background stroke
    kept = keep_strokes(labels, strokes, num_classes=2)
    assert kept[0, 0, 0] == 2 and kept[1, 1, 1] == 0
    assert (kept[strokes == 0] == 1).all()
