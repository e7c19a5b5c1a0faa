"""Mean-field CRF refinement: boundaries move onto the images' edges, companions' edges are kept."""

import numpy as np

from lib.scribbles.crf import mean_field
from lib.scribbles.propagation import propagate

SHAPE = (20, 8, 8)


def slab_probabilities(first: int, last: int, inside: float, outside: float) -> np.ndarray:
    """(2, 20, 8, 8): class 1 with probability `inside` on the slab first <= x <= last, class 0 with
    probability `outside` elsewhere."""
    probabilities = np.empty((2, *SHAPE), np.float32)
    probabilities[1] = 1.0 - outside
    probabilities[1, first : last + 1] = inside
    probabilities[0] = 1.0 - probabilities[1]
    return probabilities


def test_a_one_voxel_shell_moves_to_the_side_it_looks_like():
    """The organ (x >= 10) is bright on the reference; the propagation gave it the dark plane x = 9 too,
    with the confidence the walker gives such a shell (0.75)."""
    rng = np.random.default_rng(0)
    image = np.zeros((1, *SHAPE), np.float32)
    image[0, 10:] = 0.5
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    probabilities = slab_probabilities(11, 19, 0.95, 0.95)
    probabilities[1, 9:11], probabilities[0, 9:11] = 0.75, 0.25

    labels = mean_field(probabilities, image, (1.0, 1.0, 1.0)).argmax(axis=0)

    assert probabilities.argmax(axis=0)[9].all()  # before: the shell is organ
    assert (labels[:10] == 0).all() and (labels[10:] == 1).all()


def test_a_boundary_only_the_companion_shows_is_kept():
    """A two-voxel slab the propagation is unsure of (0.6): flat on the reference, bright on the companion.
    Without the companion the CRF smooths it away; with it, the slab stays."""
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 0.02, SHAPE).astype(np.float32)
    companion = np.zeros(SHAPE, np.float32)
    companion[9:11] = 3.0
    probabilities = slab_probabilities(9, 10, 0.6, 0.9)

    alone = mean_field(probabilities, reference[None], (1.0, 1.0, 1.0)).argmax(axis=0)
    both = mean_field(probabilities, np.stack([reference, companion]), (1.0, 1.0, 1.0)).argmax(axis=0)

    assert (alone == 0).all()
    np.testing.assert_array_equal(both, probabilities.argmax(axis=0))


def test_the_propagation_keeps_every_seed_as_drawn():
    """Stroke voxels keep probability 1 for their class, even a stroke drawn across the image's edge."""
    image = np.zeros((1, *SHAPE), np.float32)
    image[0, 10:] = 0.5
    strokes = np.zeros(SHAPE, np.int64)
    strokes[2, 4, :] = 2  # background (K + 1 with K = 1)
    strokes[8:16, 4, 4] = 1  # class 1, two voxels of it in the dark half

    probabilities = propagate(image, strokes, 1, (1.0, 1.0, 1.0))

    np.testing.assert_array_equal(probabilities[1][strokes == 1], 1.0)
    np.testing.assert_array_equal(probabilities[0][strokes == 2], 1.0)
    labels = probabilities.argmax(axis=0)
    assert (labels[:8] == 0).all() and (labels[10:] == 1).all()
