"""The working grid: an image's field of view at the plan's spacing, and the way back.

The working grid keeps the reference image's axes, orientation and field of view (voxel edges
aligned) and only changes the number of voxels, so going there and back is an exact scaling of
voxel indices, for any orientation (oblique included). MONAI's `Resize` moves images there and
updates their affine accordingly; labels and predictions have their own rules below.
"""

from __future__ import annotations

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


def restore_labels(scores: torch.Tensor, shape: Sequence[int], rows_per_chunk: int = 32) -> np.ndarray:
    """Class labels (uint8, `shape`) of class scores (C, x, y, z) on the working grid, linearly interpolated
    onto the reference grid of `shape` (align-corners-False, the scaling that `Resize` uses), argmax per voxel.

    Hand-written rather than MONAI's `Resize` + argmax because that holds C float scores for every
    reference voxel at once (C x 52 M x 4 bytes for a 512 x 512 x 200 CT); here the interpolation is
    separable and the last axis is done a block of rows at a time, so memory stays near the output's.
    """
    shape = tuple(int(n) for n in shape)
    scores = scores.float()
    scores = _interpolate_axis(_interpolate_axis(scores, 2, shape[1]), 3, shape[2])
    low, high, weight = _linear_weights(scores.shape[1], shape[0])
    labels = np.empty(shape, np.uint8)
    for start in range(0, shape[0], rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, shape[0]))
        w = weight[rows][None, :, None, None]
        block = scores[:, low[rows]] * (1 - w) + scores[:, high[rows]] * w
        labels[rows] = block.argmax(dim=0).to(torch.uint8).numpy()
    return labels


def _linear_weights(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of linear interpolation from `size_in` to `size_out` samples."""
    source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * size_in / size_out - 0.5).clamp(0, size_in - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=size_in - 1)
    return low, high, (source - low).float()


def _interpolate_axis(scores: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    if scores.shape[axis] == size:
        return scores
    low, high, weight = _linear_weights(scores.shape[axis], size)
    view = [1] * scores.ndim
    view[axis] = size
    weight = weight.view(view)
    return scores.index_select(axis, low) * (1 - weight) + scores.index_select(axis, high) * weight
