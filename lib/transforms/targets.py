"""Training targets from stored labels: class indices with IGNORE, pseudo labels, and held-out strokes.

Stored scribbles use 0 = none, 1..K = class, K+1 = background; a `final` label is dense
0..K. Networks train on class indices 0..K with IGNORE (-1) where nothing is annotated.
"""

import hashlib
from collections.abc import Mapping

import numpy as np
import torch
from monai.transforms import MapTransform

from lib.errors import InvalidInput
from lib.labels import IGNORE
from lib.scribbles.propagation import background_seeds, propagate
from lib.transforms.grid import resize_dense, resize_strokes, voxel_spacing
from lib.transforms.modalities import load_volume

# Strokes in one of every HOLD_OUT_EVERY blocks of BLOCK^3 voxels are kept out of training
# and used for validation, so the key metric is measured on strokes the model has not seen.
BLOCK = 8
HOLD_OUT_EVERY = 5
# With this many annotated cases or more, whole cases are held out instead (VALIDATION_SHARE of them, at
# least one; MONAI Label's val_split): strokes of the cases a model trained on say little about the next
# patient. On the demo, a model of step 50 gave even its worst class 0.81 on the held-out blocks and found
# no spleen on new cases.
CASE_SPLIT_FROM = 4
VALIDATION_SHARE = 0.2


def split_cases(datalist: list[dict]) -> tuple[list[dict], list[dict]]:
    """(training items, validation items). Below CASE_SPLIT_FROM cases, every case is in both (held-out
    blocks, see HoldOutStrokesd); from there on, a fixed choice of whole cases (by a hash of the case id,
    so a new case rarely moves the others) is validation only, marked `held_out_case`."""
    if len(datalist) < CASE_SPLIT_FROM:
        return list(datalist), list(datalist)
    count = max(1, round(VALIDATION_SHARE * len(datalist)))
    order = sorted(datalist, key=lambda item: hashlib.sha256(str(item["case"]).encode()).hexdigest())
    held = {id(item) for item in order[:count]}
    return [d for d in datalist if id(d) not in held], [{**d, "held_out_case": True} for d in order[:count]]


class LoadTargetd(MapTransform):
    """`label` (a stored label file on the reference grid; dense when `data["dense"]`) -> int64 class
    indices with IGNORE on the working grid of `image` (see LoadModalitiesd).

    Strokes are moved to the working grid so that thin strokes survive (lib.transforms.grid.resize_strokes),
    dense labels by nearest neighbour. Values outside the convention (a file put in the datastore by
    hand) become IGNORE: they teach nothing.
    """

    def __init__(self, num_classes: int, key: str = "label", image_key: str = "image"):
        super().__init__(keys=[key])
        self.num_classes = num_classes
        self.key = key
        self.image_key = image_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        label = load_volume(d[self.key], "label")
        if tuple(label.shape[1:]) != tuple(d["reference_shape"]):
            raise InvalidInput(f"label {tuple(label.shape[1:])} and image {d['reference_shape']} differ in shape")
        values = torch.round(label.as_tensor()).long()
        shape = d[self.image_key].shape[1:]
        dense = bool(d.get("dense", False))
        background = self.num_classes + 1
        values[(values < 0) | (values > (self.num_classes if dense else background))] = 0 if not dense else IGNORE
        if dense:
            target = resize_dense(values, shape)
        else:
            strokes = resize_strokes(values, shape, background)
            target = torch.where(strokes == 0, IGNORE, torch.where(strokes == background, 0, strokes))
        d[self.key] = target
        return d


class PropagateStrokesd(MapTransform):
    """Adds `pseudo` (class indices) and `confidence` (0..1) from the propagation of the `label` strokes
    over the `image` (lib.scribbles.propagation); for a CT reference, air is background.

    `method`: `walker_refined` (the walker, its unsure voxels decided by appearance, then a CRF),
    `random_walker` (the walker alone) or `none`. Dense cases and `none` get the label itself as
    `pseudo` and confidence 0 (no pseudo labels).
    """

    def __init__(self, num_classes: int, reference_modality: str, method: str = "walker_refined"):
        super().__init__(keys=["label"])
        self.num_classes = num_classes
        self.reference_modality = reference_modality
        self.method = method

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        target = d["label"]
        if self.method == "none" or d.get("dense", False):
            d["pseudo"], d["confidence"] = target.clone(), torch.zeros(target.shape, dtype=torch.float32)
            return d
        image = d["image"]
        strokes = torch.where(target == IGNORE, 0, torch.where(target == 0, self.num_classes + 1, target))[0]
        air = background_seeds(image[0], self.reference_modality)
        probabilities = propagate(
            image.numpy(),
            strokes.numpy(),
            self.num_classes,
            voxel_spacing(image.affine),
            air,
            refine=self.method == "walker_refined",
        )
        d["pseudo"] = torch.from_numpy(probabilities.argmax(axis=0))[None].long()
        d["confidence"] = torch.from_numpy(probabilities.max(axis=0))[None]
        return d


class PropagateHeldOutCased(PropagateStrokesd):
    """Validation regions: the propagation of a held-out case's strokes as `pseudo` (whole organs, for
    lib.metrics.WorstRegionDice; with `method` "none", the strokes themselves), IGNORE everywhere on the
    other items, whose held-out strokes are scattered blocks that outline no region."""

    def __call__(self, data: Mapping) -> dict:
        if data.get("held_out_case", False):
            return super().__call__(data)
        d = dict(data)
        d["pseudo"] = torch.full_like(d["label"], IGNORE)
        return d


def held_out_blocks(shape: tuple[int, ...]) -> np.ndarray:
    """Bool mask of the voxels in held-out blocks: a fixed pseudo-random 1-in-HOLD_OUT_EVERY pattern."""
    blocks = np.meshgrid(*[np.arange(n) // BLOCK for n in shape], indexing="ij")
    code = blocks[0] * 73856093 ^ blocks[1] * 19349663 ^ blocks[2] * 83492791
    return code % HOLD_OUT_EVERY == 0


class HoldOutStrokesd(MapTransform):
    """Keep only the training part (`split="train"`) or the held-out part (`"validation"`) of the
    annotated voxels. A case whose annotations fall entirely on one side keeps them all in both; a
    held-out case (`held_out_case`, see split_cases) keeps them all."""

    def __init__(self, split: str, key: str = "label"):
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        super().__init__(keys=[key])
        self.split = split
        self.key = key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if d.get("held_out_case", False):
            return d
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
