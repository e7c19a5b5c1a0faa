"""Where the simulated annotator draws (benchmarks.annotator), in the stored convention (1..K, K+1 background).

Round 0 draws a few strokes per structure (every class and the background inside the body) on
axial slices spread evenly over the structure, each a partial skeleton of the structure on that
slice (lib.data.scribbles). Every later round strokes where the current result is most wrong: the
connected components of voxels whose true label is v and that the result labels otherwise (a false
negative of v, a false positive of what it was labelled), largest first, each on its axial slice of
largest cross-section (where a person scrolling through would stop), with the true label. A
component gets a second stroke, on another slice, only when every larger one has one; the round
stops at its budget of strokes and voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_fill_holes, find_objects
from scipy.ndimage import label as components

from lib.data.scribbles import ScribbleSettings, stroke_in_slice

AXIS = 2  # axial slices: where people draw
STROKE = ScribbleSettings(erosion=2, keep=0.5, min_length=5)
MIN_ERROR_VOXELS = 10  # smaller error components are not worth a stroke


@dataclass(frozen=True)
class Budget:
    """What one correction round may draw on one case."""

    strokes: int
    voxels: int


def body_mask(ct: np.ndarray, threshold: float) -> np.ndarray:
    """Inside the body: above `threshold` HU, holes filled slice by slice."""
    return np.stack([binary_fill_holes(s) for s in np.moveaxis(ct > threshold, AXIS, 0)], axis=AXIS)


def first_strokes(truth: np.ndarray, num_classes: int, per_structure: int, body: np.ndarray, seed: int) -> np.ndarray:
    """Round 0: `per_structure` strokes of every class and of the background in the body, on axial slices
    spread evenly over the structure's extent."""
    rng = np.random.default_rng(seed)
    strokes = np.zeros(truth.shape, np.uint8)
    structures = [(c, truth == c) for c in range(1, num_classes + 1)] + [(num_classes + 1, (truth == 0) & body)]
    for value, region in structures:
        slices = np.flatnonzero(region.any(axis=(0, 1)))
        if len(slices) == 0:
            continue
        picks = np.unique(slices[((np.arange(per_structure) + 0.5) / per_structure * len(slices)).astype(int)])
        for z in picks:
            stroke = stroke_in_slice(region[..., z], STROKE, rng) & (strokes[..., z] == 0)
            strokes[..., z][stroke] = value
    return strokes


def error_strokes(
    truth: np.ndarray, result: np.ndarray, labelled: np.ndarray, num_classes: int, budget: Budget, seed: int
) -> np.ndarray:
    """New strokes where `result` is most wrong, within `budget`, off the `labelled` voxels."""
    rng = np.random.default_rng(seed)
    errors = []  # (size, stroke value, component mask in its box, the box)
    for v in range(num_classes + 1):
        ids, _ = components((truth == v) & (result != v) & (labelled == 0))
        sizes = np.bincount(ids.ravel())
        for index, box in enumerate(find_objects(ids), start=1):
            if box is not None and sizes[index] >= MIN_ERROR_VOXELS:
                errors.append((sizes[index], v or num_classes + 1, ids[box] == index, box))
    errors.sort(key=lambda e: -e[0])
    new = np.zeros(truth.shape, np.uint8)
    used: list[list[int]] = [[] for _ in errors]
    drawn, voxels_left = 0, budget.voxels
    longest = max(1, 2 * budget.voxels // max(budget.strokes, 1))  # no single stroke takes the whole round
    for _ in range(3):  # a second or third stroke on a component only after every larger one has one
        for i, (_, value, mask, box) in enumerate(errors):
            if drawn >= budget.strokes or voxels_left <= 0:
                return new
            area = mask.sum(axis=(0, 1)).astype(float)
            for z in used[i]:  # another slice than the ones already stroked, at least 2 apart
                area[max(z - 1, 0) : z + 2] = 0
            if area.max() < 3:
                continue
            z = int(area.argmax())
            slab = new[box][..., z]
            pixels = np.argwhere(stroke_in_slice(mask[..., z] & (slab == 0), STROKE, rng))
            if len(pixels) == 0:
                continue
            # the stroke's middle part when the budget cuts it short
            middle = pixels[np.argmin(np.linalg.norm(pixels - pixels.mean(axis=0), axis=1))]
            pixels = pixels[np.argsort(np.linalg.norm(pixels - middle, axis=1), kind="stable")]
            pixels = pixels[: min(voxels_left, longest)]
            slab[tuple(pixels.T)] = value
            used[i].append(z)
            drawn += 1
            voxels_left -= len(pixels)
    return new


def dense_slices(truth: np.ndarray, body: np.ndarray, num_classes: int, voxels: int) -> np.ndarray:
    """Dense labels of whole axial slices in the body, about `voxels` of them (at least one slice); slices in
    bisection order (middle, quarters, ...) over the extent of the structures, so that more voxels only add
    slices and the first one goes through them."""
    slices = np.flatnonzero(((truth > 0) & body).any(axis=(0, 1)))
    count = int(min(len(slices), max(1, round(voxels * len(slices) / body[..., slices].sum()))))
    order, level = [], 0
    while len(order) < count:
        for k in range(2**level):
            z = int(slices[int((2 * k + 1) / 2 ** (level + 1) * len(slices))])
            if z not in order:
                order.append(z)
        level += 1
    order = order[:count]
    label = np.zeros(truth.shape, np.uint8)
    label[..., order] = np.where(truth[..., order] > 0, truth[..., order], num_classes + 1)
    label[~body] = 0
    return label
