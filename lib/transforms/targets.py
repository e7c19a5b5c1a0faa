"""Training targets from stored labels: class indices with IGNORE, and held-out strokes.

Stored scribbles use 0 = none, 1..K = class, K+1 = background; a `final` label is dense
0..K. Networks train on class indices 0..K with IGNORE (-1) where nothing is annotated.
"""

from collections.abc import Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from lib.errors import InvalidInput
from lib.labels import IGNORE

# Strokes in one of every HOLD_OUT_EVERY blocks of BLOCK^3 voxels are kept out of training
# and used for validation, so the key metric is measured on strokes the model has not seen.
BLOCK = 8
HOLD_OUT_EVERY = 5


class LabelToTargetd(MapTransform):
    """`label` (stored convention; dense when `data["dense"]`) -> int64 class indices with IGNORE."""

    def __init__(self, num_classes: int, key: str = "label", image_key: str = "image"):
        super().__init__(keys=[key])
        self.num_classes = num_classes
        self.key = key
        self.image_key = image_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        label = d[self.key]
        if tuple(label.shape[1:]) != tuple(d[self.image_key].shape[1:]):
            raise InvalidInput(
                f"label {tuple(label.shape[1:])} and image {tuple(d[self.image_key].shape[1:])} differ in shape"
            )
        values = torch.round(torch.as_tensor(label)).long()
        dense = bool(d.get("dense", False))
        target = values.clone()
        if not dense:
            target[values == 0] = IGNORE
            target[values == self.num_classes + 1] = 0
        # values outside the convention (a file put in the datastore by hand) teach nothing
        target[(values < 0) | (values > self.num_classes + (0 if dense else 1))] = IGNORE
        d[self.key] = MetaTensor(target, meta=label.meta) if isinstance(label, MetaTensor) else target
        return d


def held_out_blocks(shape: tuple[int, ...]) -> np.ndarray:
    """Bool mask of the voxels in held-out blocks: a fixed pseudo-random 1-in-HOLD_OUT_EVERY pattern."""
    blocks = np.meshgrid(*[np.arange(n) // BLOCK for n in shape], indexing="ij")
    code = blocks[0] * 73856093 ^ blocks[1] * 19349663 ^ blocks[2] * 83492791
    return code % HOLD_OUT_EVERY == 0


class HoldOutStrokesd(MapTransform):
    """Keep only the training part (`split="train"`) or the held-out part (`"validation"`) of the
    annotated voxels. A case whose annotations fall entirely on one side keeps them all in both."""

    def __init__(self, split: str, key: str = "label"):
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        super().__init__(keys=[key])
        self.split = split
        self.key = key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        target = d[self.key]
        annotated = target[0] != IGNORE
        held_out = torch.from_numpy(held_out_blocks(tuple(annotated.shape))).to(annotated.device)
        if not (annotated & held_out).any() or not (annotated & ~held_out).any():
            return d
        drop = held_out if self.split == "train" else ~held_out
        target = target.clone()
        target[0][drop] = IGNORE
        d[self.key] = target
        return d
