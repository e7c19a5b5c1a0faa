"""From strokes to regions: random-walker propagation of every class's strokes at once.

Strokes alone teach a network where the strokes are, not where the organs end; a propagation
that follows the images carries each stroke out to the edges the images show (the `pce` and
`random_walker` methods of benchmarks.accuracy compare the two on the same strokes). It is used twice:

- as pseudo labels for training (lib.training), weighted by how sure the propagation is;
- as the immediate answer of the scribbles task (lib.infers.scribbles).

The walker (lib.scribbles.random_walk) takes every present modality as a channel, the voxels it is
unsure of are then decided by how each class looks in its sure voxels (lib.scribbles.appearance), and a
mean-field CRF moves the boundaries onto the images' edges (lib.scribbles.crf); this module prepares the
seeds and data:

- seeds: class strokes, background strokes, and, for a CT reference, air (below -500 HU) as
  background, since annotators never stroke the air yet it is most of a scan;
- a companion modality that has no data in part of the grid (outside its field of view) gets its
  nearest valid value there, so the edge of its field of view is not taken for an organ boundary;
- classes without a single stroke get probability 0.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from lib.scribbles import random_walk
from lib.scribbles.appearance import refine_unsure
from lib.scribbles.crf import mean_field
from lib.transforms.grid import resize_strokes, voxel_spacing
from lib.transforms.intensity import CT_AIR_HU, hu_to_normalized

# Random-walker edge weight exp(-beta * |grad|^2 / (10 std(data))); chosen with the walker solved as
# lib.scribbles.random_walk solves it: mean Dice on the real scan 0.906 / 0.909 / 0.911 / 0.908 for beta
# 5000 / 7000 / 10000 / 15000, on the four training phantoms 0.900 / 0.904 / 0.900 / 0.884.
BETA = 7000.0
CT_AIR = hu_to_normalized(CT_AIR_HU)


def propagate(
    image: np.ndarray,
    strokes: np.ndarray,
    num_classes: int,
    spacing: tuple[float, float, float],
    background_seeds: np.ndarray | None = None,
    beta: float = BETA,
    refine: bool = True,
) -> np.ndarray:
    """Class probabilities (K+1, X, Y, Z) float32, class 0 = background, from strokes.

    ``image``: (C, X, Y, Z) normalized channels, NaN where a channel has no data; ``strokes``:
    stored convention (0 none, 1..K class, K+1 background); ``background_seeds``: extra voxels
    known to be background (e.g. air), used where no stroke lies; ``refine``: the voxels the
    walker is unsure of decided again by the classes' appearance (lib.scribbles.appearance), then the
    boundaries moved onto the images' edges (lib.scribbles.crf); seeds keep their class. Without
    any stroke at all, everything is background with probability 1.
    """
    seeds = np.where(strokes == num_classes + 1, num_classes + 1, strokes).astype(np.int32)
    seeds[(seeds < 0) | (seeds > num_classes + 1)] = 0
    if background_seeds is not None:
        seeds[(seeds == 0) & background_seeds] = num_classes + 1
    probabilities = np.zeros((num_classes + 1, *strokes.shape), np.float32)
    labels = np.unique(seeds[seeds > 0])
    if len(labels) < 2:
        probabilities[0 if len(labels) == 0 or labels[0] == num_classes + 1 else labels[0]] = 1.0
        return probabilities
    data = _fill_missing(image)
    relative_spacing = np.asarray(spacing, float) / min(spacing)
    solved = random_walk.solve(np.moveaxis(data, 0, -1), seeds, beta, relative_spacing)
    for index, label in enumerate(labels):
        probabilities[0 if label == num_classes + 1 else label] = solved[index]
    probabilities = probabilities.clip(min=0.0)  # the solver's tolerance leaves small errors
    probabilities /= probabilities.sum(axis=0, keepdims=True).clip(min=1e-6)
    if refine:
        # seeds stay one-hot: the appearance step keeps sure voxels, and the CRF keeps a class at 0 at 0
        probabilities = mean_field(refine_unsure(probabilities, data), data, relative_spacing)
    return probabilities


def stroke_probabilities(
    image, strokes: np.ndarray, num_classes: int, reference_modality: str, refine: bool = True
) -> torch.Tensor:
    """Propagated class probabilities (K+1, working grid) of `image` (a working-grid MetaTensor, as
    LoadModalitiesd gives) from strokes stored on the reference grid; `refine` as in `propagate`."""
    working = resize_strokes(
        torch.as_tensor(np.asarray(strokes).astype(np.int64))[None], image.shape[1:], num_classes + 1
    )
    air = background_seeds(image[0], reference_modality)
    probabilities = propagate(
        image.numpy(), working[0].numpy(), num_classes, voxel_spacing(image.affine), air, refine=refine
    )
    return torch.from_numpy(probabilities)


def keep_strokes(labels: np.ndarray, strokes: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels (0..K, reference grid) with every stroke as drawn: class strokes their class, background strokes 0."""
    labels = labels.copy()
    drawn = (strokes > 0) & (strokes <= num_classes + 1)
    labels[drawn] = np.where(strokes[drawn] == num_classes + 1, 0, strokes[drawn])
    return labels


def background_seeds(reference: torch.Tensor | np.ndarray, modality: str) -> np.ndarray | None:
    """Voxels known to be background from the reference image alone: air on CT (normalized values,
    see lib.transforms.modalities.normalize); None for other modalities."""
    if modality != "ct":
        return None
    return np.asarray(reference) < CT_AIR


def _fill_missing(image: np.ndarray) -> np.ndarray:
    """Each channel's NaN voxels get the value of the nearest voxel with data (all-NaN channels are dropped)."""
    channels = []
    for channel in image:
        missing = np.isnan(channel)
        if missing.all():
            continue
        if missing.any():
            nearest = distance_transform_edt(missing, return_distances=False, return_indices=True)
            channel = channel[tuple(nearest)]
        channels.append(channel.astype(np.float32))
    return np.stack(channels)
