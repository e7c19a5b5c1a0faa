"""The random walker's linear system (Grady 2006), built on the image grid and solved to convergence.

Written here rather than taken from scikit-image's ``random_walker``, which we used before: its
multigrid mode (cg_mg) stops after 30 iterations with only a warning and returns what it has
(on one annotator round's strokes that lost a phantom's liver, spleen and tumour: Dice 0.03, 0.06,
0.02 against 0.84, 0.95, 0.85 solved to convergence); its multigrid set-up gives NaN on most of our
scans, and its Jacobi fallback takes minutes where strokes are few and far apart. The graph is
scikit-image's: 6-neighbour edges weighted exp(-beta |grad|^2 / (10 std sqrt(C))), gradients divided
by the voxel spacing, plus a small floor so that every voxel stays connected. The system is solved by
scipy's conjugate gradient with pyamg's smoothed-aggregation multigrid as preconditioner.
"""

from __future__ import annotations

import logging

import numpy as np
import pyamg
from scipy import sparse
from scipy.sparse.linalg import cg

logger = logging.getLogger(__name__)

WEIGHT_FLOOR = 1e-6  # scikit-image's eps: an edge across the strongest boundary still conducts a little
TOLERANCE = 1e-3  # relative residual of each label's solve
MAX_ITERATIONS = 200  # preconditioned CG converges in 10-40 on our scans


def edge_weights(data: np.ndarray, beta: float, spacing) -> list[np.ndarray]:
    """Per axis, the weights of the edges between neighbours along that axis ((X-1, Y, Z), ...).

    ``data``: (X, Y, Z, C) float, every channel finite."""
    scale = beta / (10 * max(float(data.std()), 1e-12) * np.sqrt(data.shape[-1]))
    weights = []
    for axis in range(3):
        squared_gradient = (np.diff(data, axis=axis) ** 2).sum(axis=-1) / float(spacing[axis]) ** 2
        weights.append(np.exp(-scale * squared_gradient) + WEIGHT_FLOOR)
    return weights


def laplacian(data: np.ndarray, beta: float, spacing) -> sparse.csr_array:
    """The graph Laplacian (N x N, N = X*Y*Z, C order) of the weighted 6-neighbour grid."""
    shape = data.shape[:3]
    index = np.arange(int(np.prod(shape))).reshape(shape)
    heads, tails, weights = [], [], []
    for axis, weight in enumerate(edge_weights(data, beta, spacing)):
        heads.append(np.delete(index, -1, axis=axis).ravel())
        tails.append(np.delete(index, 0, axis=axis).ravel())
        weights.append(weight.ravel())
    heads, tails, weights = np.concatenate(heads), np.concatenate(tails), np.concatenate(weights)
    size = index.size
    adjacency = sparse.coo_array(
        (np.concatenate([weights, weights]), (np.concatenate([heads, tails]), np.concatenate([tails, heads]))),
        shape=(size, size),
    ).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return (sparse.diags_array(degree) - adjacency).tocsr()


def solve(data: np.ndarray, seeds: np.ndarray, beta: float, spacing) -> np.ndarray:
    """Probability (L, X, Y, Z) float32 that a walker from each voxel first reaches each seeded label,
    labels in increasing order of their values in ``seeds`` (0 = unseeded); at least one voxel seeded."""
    flat = seeds.ravel()
    free = flat == 0
    labels = np.unique(flat[~free])
    system = laplacian(data.astype(np.float64), beta, spacing)
    free_block = system[free][:, free].tocsr()
    seeded_block = system[free][:, ~free].tocsr()
    preconditioner = pyamg.smoothed_aggregation_solver(free_block, symmetry="symmetric").aspreconditioner()
    probabilities = np.zeros((len(labels), flat.size), np.float32)
    for row, label in enumerate(labels):
        is_label = (flat[~free] == label).astype(np.float64)
        probabilities[row, ~free] = is_label
        if not free.any():
            continue
        solution, info = cg(
            free_block, -(seeded_block @ is_label), rtol=TOLERANCE, maxiter=MAX_ITERATIONS, M=preconditioner
        )
        if info:
            logger.warning(f"random walker: label {label} not converged after {MAX_ITERATIONS} iterations")
        probabilities[row, free] = solution
    return probabilities.reshape(len(labels), *seeds.shape)
