"""Appearance refinement of a propagation: the voxels the random walker is unsure of are decided again
by how each class looks in its sure voxels, in all channels at once.

The walker sees only edges. Where an edge is blurred, as a companion modality's is after resampling
from a coarser grid (it ramps over three voxels), it cuts somewhere in the ramp, wherever the seeds
pull it: on the phantoms it labelled a third of each tumour as liver and cut the liver one voxel
inside its surface. The sure voxels of each class show what that class looks like in every channel;
as in GrabCut (Rother et al. 2004), such an appearance model decides where the edges cannot. Each unsure
voxel x gets

    P(k | x) proportional to P_walker(k)^PRIOR_POWER * h_k(x)

over the classes the walker gives at least MIN_PRIOR, where h_k is the joint histogram of the lightly
smoothed channels over class k's sure voxels. The walker's term keeps far-away classes that happen to
look alike (liver and spleen on CT) out of a voxel; the histogram places the boundary inside the band.

Measured with the walker's own strokes (benchmarks' phantom and real datasets, `random_walker` against
`propagation`), mean Dice: four training phantoms 0.908 -> 0.953 (tumour 0.78 -> 0.92), real scan
0.909 -> 0.918. Written here: MONAI and scikit-image have no such step (MONAI Label's
HistogramBasedGraphCut builds one-class histograms from the strokes alone, which are too few and too
central to describe a boundary).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

# Chosen on the phantoms' four training cases and the real scan, mean Dice of the refined propagation:
# SURE 0.9, PRIOR_POWER 1, HISTOGRAM_SIGMA 1: 0.955 / 0.914; 0.9, 2, 1.5 (these): 0.952 / 0.918; 0.7, 2, 1:
# 0.952 / 0.914. Bins over the whole range of the image (40) instead of the unsure voxels': real 0.876-0.911;
# a histogram per channel instead of the joint one: real 0.901-0.904.
SURE = 0.9
PRIOR_POWER = 2.0
MIN_PRIOR = 0.02
TOTAL_BINS = 4096  # joint histogram size: 64 x 64 for two channels, 16^3 for three
MAX_BINS_PER_CHANNEL = 64
HISTOGRAM_SIGMA = 1.5  # bins
IMAGE_SIGMA = 0.7  # voxels: takes the edge off the noise, keeps one-voxel structures
DENSITY_FLOOR = 1e-4  # an intensity never seen in a class is unlikely for it, not impossible
# A class with fewer sure voxels than this has no appearance model, and the voxels it may own are left to
# the walker: a flat likelihood would lose to every class with a peaked one (a tumour with a single short
# stroke vanished into the liver: CT only, one annotator round's strokes on a phantom, tumour 0.72 -> 0.01).
MIN_SURE_VOXELS = 20


def refine_unsure(probabilities: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Class probabilities (K+1, X, Y, Z) with the unsure voxels' replaced by the posterior above.

    ``image``: (C, X, Y, Z) finite channels on the same grid."""
    sure = probabilities.max(axis=0) >= SURE
    unsure = ~sure
    if not unsure.any() or not sure.any():
        return probabilities
    label = probabilities.argmax(axis=0)
    grid = (bins_per_channel(len(image)),) * len(image)
    size = int(np.prod(grid))
    flat = np.ravel_multi_index(tuple(binned(image, unsure, grid[0])), grid)
    unsure_bins = flat[unsure]
    prior = probabilities[:, unsure]
    log_posterior = PRIOR_POWER * np.log(np.maximum(prior, 1e-12))
    # the walker's own choice is never ruled out, so every voxel keeps a class
    candidate = prior >= np.minimum(MIN_PRIOR, prior.max(axis=0, keepdims=True))
    decidable = np.ones(prior.shape[1], bool)
    for k in range(len(probabilities)):
        members = sure & (label == k)
        if members.sum() < MIN_SURE_VOXELS:
            decidable &= ~candidate[k]  # no appearance to compare with: the walker decides
            continue
        histogram = np.bincount(flat[members], minlength=size).reshape(grid).astype(np.float64)
        histogram = gaussian_filter(histogram, HISTOGRAM_SIGMA).ravel()
        # density relative to a flat histogram
        density = histogram / histogram.sum() * size
        log_posterior[k] += np.log(density[unsure_bins] + DENSITY_FLOOR)
    log_posterior[~candidate] = -np.inf
    log_posterior -= log_posterior.max(axis=0, keepdims=True)
    posterior = np.exp(log_posterior)
    posterior /= posterior.sum(axis=0, keepdims=True)
    refined = probabilities.copy()
    refined[:, unsure] = np.where(decidable, posterior, prior)
    return refined


def bins_per_channel(channels: int) -> int:
    return min(MAX_BINS_PER_CHANNEL, int(round(TOTAL_BINS ** (1.0 / channels))))


def binned(image: np.ndarray, unsure: np.ndarray, n: int) -> np.ndarray:
    """(C, X, Y, Z) bin index (0..n-1) of each smoothed channel; the bins span the unsure voxels' 1-99 %
    range, where decisions are made (values beyond fall in the end bins)."""
    out = np.empty(image.shape, np.int64)
    for c, channel in enumerate(image):
        smoothed = gaussian_filter(channel.astype(np.float32), IMAGE_SIGMA)
        low, high = np.quantile(smoothed[unsure], [0.01, 0.99])
        scale = n / max(float(high - low), 1e-6)
        out[c] = np.clip(((smoothed - low) * scale).astype(np.int64), 0, n - 1)
    return out
