"""The random walker's graph and solve, checked by hand on tiny grids."""

import numpy as np

from lib.scribbles.random_walk import WEIGHT_FLOOR, laplacian, solve


def test_laplacian_of_two_voxels_by_hand():
    data = np.array([0.0, 1.0]).reshape(2, 1, 1, 1)  # std 0.5, squared gradient 1 / spacing 2 squared
    system = laplacian(data, beta=5.0, spacing=(2.0, 1.0, 1.0)).toarray()
    weight = np.exp(-5.0 / (10 * 0.5) * 1 / 4) + WEIGHT_FLOOR
    np.testing.assert_allclose(system, [[weight, -weight], [-weight, weight]])


def test_laplacian_rows_sum_to_zero_and_edges_join_only_neighbours():
    data = np.random.default_rng(0).normal(size=(3, 4, 2, 2))
    system = laplacian(data, beta=100.0, spacing=(1.0, 1.0, 3.0)).toarray()
    np.testing.assert_allclose(system.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(system, system.T)
    coordinates = np.stack(np.unravel_index(np.arange(24), (3, 4, 2)), axis=1)
    heads, tails = np.nonzero(np.triu(system, 1))
    assert len(heads) == 2 * 4 * 2 + 3 * 3 * 2 + 3 * 4 * 1  # the 6-neighbour edges of a 3 x 4 x 2 grid
    assert (np.abs(coordinates[heads] - coordinates[tails]).sum(axis=1) == 1).all()


def test_uniform_chain_gives_the_harmonic_interpolation():
    """On a chain of equal weights the probability of reaching the left seed falls linearly."""
    seeds = np.array([1, 0, 0, 0, 2]).reshape(5, 1, 1)
    probabilities = solve(np.zeros((5, 1, 1, 1)), seeds, beta=1000.0, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(probabilities[0, :, 0, 0], [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-3)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-3)


def test_an_edge_stops_the_walk_and_labels_follow_their_seed_values():
    data = np.zeros((6, 1, 1, 1))
    data[3:] = 1.0  # a step between voxels 2 and 3
    seeds = np.array([7, 0, 0, 0, 0, 3]).reshape(6, 1, 1)  # labels in increasing order: 3, then 7
    probabilities = solve(data, seeds, beta=1000.0, spacing=(1.0, 1.0, 1.0))
    assert probabilities.shape == (2, 6, 1, 1) and probabilities.dtype == np.float32
    np.testing.assert_array_equal(probabilities.argmax(axis=0)[:, 0, 0], [1, 1, 1, 0, 0, 0])
    assert probabilities[1, 1:3].min() > 0.99 and probabilities[0, 3:5].min() > 0.99


def test_a_fully_seeded_grid_is_its_seeds():
    seeds = np.array([2, 5, 5, 2]).reshape(2, 2, 1)
    probabilities = solve(np.zeros((2, 2, 1, 1)), seeds, beta=1000.0, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(probabilities[:, :, :, 0], [[[1, 0], [0, 1]], [[0, 1], [1, 0]]])
