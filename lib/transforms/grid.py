"""The working grid: an image's field of view at the plan's spacing, and the way back.

The working grid keeps the reference image's axes, orientation and field of view (voxel edges
aligned) and only changes the number of voxels, so going there and back is an exact scaling of
voxel indices, for any orientation (oblique included). MONAI's `Resize` moves images there and
updates their affine accordingly; labels and predictions have their own rules below.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Resize

from lib.labels import IGNORE


def voxel_spacing(affine) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes, from a 4x4 (or batched) affine."""
    affine = torch.as_tensor(affine, dtype=torch.float64)
    affine = affine[0] if affine.ndim == 3 else affine
    return tuple(float(s) for s in torch.linalg.norm(affine[:3, :3], dim=0))


def working_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """The same field of view at (about) the `target` spacing."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def resize_image(image: MetaTensor, shape: Sequence[int]) -> MetaTensor:
    """An image on a grid of `shape` over its own field of view: box-filtered where it shrinks."""
    shape = tuple(int(n) for n in shape)
    if shape == tuple(image.shape[1:]):
        return image
    shrinks = all(new <= old for new, old in zip(shape, image.shape[1:], strict=True))
    return Resize(shape, mode="area" if shrinks else "trilinear")(image)


def resize_strokes(strokes: torch.Tensor, shape: Sequence[int], background: int) -> torch.Tensor:
    """Stroke labels (1, X, Y, Z; 0 = none) on a grid of `shape`: a working voxel gets a value when any stroke
    voxel of that value lies inside it, so thin strokes survive downsampling (class strokes win over
    background strokes, a higher class over a lower one where they share a voxel)."""
    shape = tuple(int(n) for n in shape)
    if shape == tuple(strokes.shape[1:]):
        return strokes
    values = [v for v in torch.unique(strokes).tolist() if v > 0]
    order = sorted(values, key=lambda v: (v != background, v))  # background first: classes overwrite it
    out = torch.zeros((1, *shape), dtype=strokes.dtype)
    for value in order:
        mask = (strokes == value).float()[None]
        if all(new <= old for new, old in zip(shape, strokes.shape[1:], strict=True)):
            hit = F.adaptive_max_pool3d(mask, shape)[0] > 0
        else:
            hit = F.interpolate(mask, size=shape, mode="nearest")[0] > 0
        out[hit] = value
    return out


def resize_dense(label: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A dense label (1, X, Y, Z) on a grid of `shape`, nearest neighbour (IGNORE stays IGNORE)."""
    shape = tuple(int(n) for n in shape)
    if shape == tuple(label.shape[1:]):
        return label
    resized = F.interpolate(label[None].float(), size=shape, mode="nearest")[0]
    return torch.where(resized < 0, IGNORE, resized).to(label.dtype)


# above this share of voxels whose corners disagree (scores noisy everywhere, as an untrained model's),
# interpolating every voxel a block of rows at a time is cheaper than gathering each one's corners (5 classes
# onto 512 x 512 x 200 on 2 cores: both near 5 s at 22 % disagreeing; dense 1.5 s faster at 30 %, 1.3 s
# slower at 15 %)
DENSE_ABOVE = 0.2


def restore_labels(scores: torch.Tensor, shape: Sequence[int], rows_per_chunk: int = 32) -> np.ndarray:
    """Class labels (uint8, `shape`) of class scores (C, x, y, z) on the working grid, linearly interpolated
    onto the reference grid of `shape` (align-corners-False, the scaling that `Resize` uses), argmax per voxel.

    Hand-written rather than MONAI's `Resize` + argmax, which holds C float scores for every reference
    voxel at once (C x 52 M x 4 bytes for a 512 x 512 x 200 CT). A voxel's interpolated scores are a
    convex combination of its 8 corners' on the working grid, so where the corners share their argmax it
    is the voxel's too: only the voxels whose corners disagree (along the boundaries, a few percent of a
    trained model's) are interpolated. Past :data:`DENSE_ABOVE` of them, every voxel is, the interpolation
    separable and the first axis done `rows_per_chunk` rows at a time, so memory stays near the output's.
    """
    shape = tuple(int(n) for n in shape)
    scores = scores.float()
    corners = [_linear_weights(n_in, n_out) for n_in, n_out in zip(scores.shape[1:], shape, strict=True)]
    lowest = highest = class_argmax(scores)
    # min and max over the corners, one axis at a time; the last axis first, while the volume is small
    for axis, (low, high, _) in reversed(list(enumerate(corners))):
        lowest = torch.minimum(lowest.index_select(axis, low), lowest.index_select(axis, high))
        highest = torch.maximum(highest.index_select(axis, low), highest.index_select(axis, high))
    unsure = lowest != highest
    if unsure.sum() > DENSE_ABOVE * unsure.numel():
        return _dense_labels(scores, shape, corners, rows_per_chunk)
    labels = lowest
    for voxels in unsure.nonzero().split(rows_per_chunk * shape[1] * shape[2]):
        labels[tuple(voxels.T)] = class_argmax(_interpolated(scores, corners, voxels))
    return labels.numpy()


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """The argmax (uint8) over the first (class) axis of `scores`, the first class on ties, as torch's.

    A running maximum class by class rather than `scores.argmax(dim=0)`, which on CPU reduces along the
    slowest axis and took 11x longer (0.61 s against 0.05 s for 5 x 32 x 512 x 200 scores on 2 cores)."""
    best = scores[0].clone()
    labels = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    for label in range(1, scores.shape[0]):
        labels.masked_fill_(scores[label] > best, label)
        torch.maximum(best, scores[label], out=best)
    return labels


def _interpolated(scores: torch.Tensor, corners: list, voxels: torch.Tensor) -> torch.Tensor:
    """Scores (C, N) linearly interpolated at the reference voxels `voxels` (N, 3): the sum over the 8
    corners of each voxel of the corner's scores times the product of its weights along the three axes."""
    strides = scores[0].stride()
    per_axis = [
        ((low[v] * stride, 1 - weight[v]), (high[v] * stride, weight[v]))
        for (low, high, weight), v, stride in zip(corners, voxels.T, strides, strict=True)
    ]
    flat = scores.reshape(scores.shape[0], -1)
    total = scores.new_zeros(scores.shape[0], len(voxels))
    for (x, wx), (y, wy), (z, wz) in itertools.product(*per_axis):
        total += flat[:, x + y + z] * (wx * wy * wz)
    return total


def _dense_labels(scores: torch.Tensor, shape: tuple, corners: list, rows_per_chunk: int) -> np.ndarray:
    """Every voxel interpolated: the last two axes at once, then the first a block of rows at a time."""
    for axis in (2, 3):
        low, high, weight = corners[axis - 1]
        weight = weight.view([-1 if a == axis else 1 for a in range(4)])
        scores = scores.index_select(axis, low) * (1 - weight) + scores.index_select(axis, high) * weight
    low, high, weight = corners[0]
    labels = np.empty(shape, np.uint8)
    for start in range(0, shape[0], rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, shape[0]))
        w = weight[rows][None, :, None, None]
        block = scores[:, low[rows]] * (1 - w) + scores[:, high[rows]] * w
        labels[rows] = class_argmax(block).numpy()
    return labels


def _linear_weights(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of linear interpolation from `size_in` to `size_out` samples."""
    source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * size_in / size_out - 0.5).clamp(0, size_in - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=size_in - 1)
    return low, high, (source - low).float()
