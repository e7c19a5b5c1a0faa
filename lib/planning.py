"""The experiment plan: working spacing, patch size and network shape chosen from the data.

In the spirit of nnU-Net's experiment planning (Isensee et al., 2021), reduced to what a
scribble server needs, and deterministic for given spacings and sizes:

1. **Spacing**: the median voxel spacing of the datastore's reference images, per axis. When
   the median case holds more voxels at that spacing than the device's budget allows, the
   finest axes are coarsened first (towards isotropy), then all of them, until it fits. Training
   and inference both work on this grid; results go back to each image's own grid.
2. **Patch**: the median case's shape at the working spacing, shrunk along its largest axis
   until it fits the patch budget, and rounded to what the network can divide.
3. **Network**: nnU-Net's rule for strides: an axis is halved at a level only while its spacing
   at that level is at most twice the finest one and the patch keeps at least 8 voxels along it,
   so anisotropic scans keep their few slices. One downsampling fewer than the preset has widths.

The plan is stored inside the model file (and as JSON beside it), so inference always uses the
plan its weights were trained with.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Budgets per device kind: voxels of the median case at the working spacing, and of one patch;
# the network's widths per preset (one per level; the first level is at half resolution, the
# last one, the bottom, at the size of the one before it).
BUDGETS = {
    "cpu": {"case_voxels": 2_000_000, "patch_voxels": 64**3},
    "gpu": {"case_voxels": 24_000_000, "patch_voxels": 128**3},
}
WIDTHS = {"small": (16, 32, 64, 128, 256), "large": (32, 64, 128, 256, 320, 320)}
MIN_BOTTLENECK = 4  # voxels along an axis, at least, at the deepest level
COARSEN_STEP = 1.05


@dataclass(frozen=True)
class Plan:
    spacing: tuple[float, float, float]  # mm per axis of the working grid
    patch_size: tuple[int, int, int]
    strides: tuple[tuple[int, int, int], ...]  # per downsampling (one fewer than levels)
    channels: tuple[int, ...]  # per network level, the last one the bottom
    num_modalities: int
    num_classes: int  # background included
    network: str = "cmfnet"  # or "unet" (lib.networks.early_fusion)

    @property
    def size_divisor(self) -> tuple[int, int, int]:
        """Every spatial size given to the network must be a multiple of this, per axis."""
        return tuple(int(np.prod([s[axis] for s in self.strides])) for axis in range(3))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> Plan:
        return cls(
            spacing=tuple(float(v) for v in values["spacing"]),
            patch_size=tuple(int(v) for v in values["patch_size"]),
            strides=tuple(tuple(int(v) for v in s) for s in values["strides"]),
            channels=tuple(int(v) for v in values["channels"]),
            num_modalities=int(values["num_modalities"]),
            num_classes=int(values["num_classes"]),
            network=str(values.get("network", "cmfnet")),
        )

    def describe(self) -> str:
        spacing = "x".join(f"{s:.2f}" for s in self.spacing)
        patch = "x".join(str(p) for p in self.patch_size)
        return (
            f"{self.network}, spacing {spacing} mm, patch {patch}, {len(self.channels)} levels "
            f"(channels {list(self.channels)}), {self.num_modalities} modalities, {self.num_classes} classes"
        )


def make_plan(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    num_modalities: int,
    num_classes: int,
    device: str = "cpu",
    preset: str = "small",
    network: str = "cmfnet",
) -> Plan:
    """The plan for images of these spacings (mm) and shapes (voxels), on a `cpu` or `gpu` device."""
    if not spacings or len(spacings) != len(shapes):
        raise ValueError("planning needs the spacing and shape of at least one image")
    budget = BUDGETS[device]
    spacings = np.asarray(spacings, float)
    extents = spacings * np.asarray(shapes, float)  # field of view in mm
    spacing = np.median(spacings, axis=0)
    median_extent = np.median(extents, axis=0)

    def shape_at(s):
        return np.maximum(np.round(median_extent / s), 1)

    while np.prod(shape_at(spacing)) > budget["case_voxels"]:
        finer = spacing < spacing.max() / COARSEN_STEP
        spacing = np.where(finer, spacing * COARSEN_STEP, spacing) if finer.any() else spacing * COARSEN_STEP

    widths = WIDTHS[preset]
    patch = np.maximum(shape_at(spacing), 8)
    while np.prod(patch) > budget["patch_voxels"]:
        # shrink the axis that is largest in mm, as nnU-Net does relative to the median shape
        axis = int(np.argmax(patch * spacing))
        patch[axis] = max(min(patch[axis] - 1, round(patch[axis] * 0.9)), 8)
    strides = _strides(spacing, patch, len(widths) - 1)
    divisor = np.prod(strides, axis=0) if strides else np.ones(3)
    patch = np.maximum(np.round(patch / divisor) * divisor, divisor)
    plan = Plan(
        spacing=tuple(round(float(s), 4) for s in spacing),
        patch_size=tuple(int(p) for p in patch),
        strides=tuple(tuple(int(v) for v in s) for s in strides),
        channels=widths[: len(strides) + 1],
        num_modalities=num_modalities,
        num_classes=num_classes,
        network=network,
    )
    logger.info(f"Plan from {len(shapes)} image(s) for {device}: {plan.describe()}")
    return plan


def _strides(spacing: np.ndarray, patch: np.ndarray, max_downsamplings: int) -> list[tuple[int, int, int]]:
    """Strides per downsampling, by nnU-Net's rule (see the module docstring)."""
    strides = []
    current_spacing, current_size = spacing.astype(float).copy(), patch.astype(float).copy()
    for _ in range(max_downsamplings):
        halve = (current_spacing <= 2 * current_spacing.min()) & (current_size / 2 >= MIN_BOTTLENECK)
        if not halve.any():
            break
        step = tuple(2 if h else 1 for h in halve)
        strides.append(step)
        current_spacing = current_spacing * np.asarray(step)
        current_size = current_size / np.asarray(step)
    return strides


def working_shape(shape: Sequence[int], spacing: Sequence[float], plan: Plan) -> tuple[int, int, int]:
    """An image's shape on the plan's grid: the same field of view at (about) the plan's spacing."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, plan.spacing, strict=True))


def save_plan_json(plan: Plan, path: Path) -> None:
    path.write_text(json.dumps(plan.to_json(), indent=2))


def pad_to_divisor(shape: Sequence[int], divisor: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(math.ceil(n / d) * d) for n, d in zip(shape, divisor, strict=True))
