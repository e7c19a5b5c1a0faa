"""Load a case's modalities onto one working grid (docs/architecture.md, "Grids").

The datastore image is the reference modality. Each companion is found by one rule,
`<folder of the reference file>/<modality>/<same case id>.<ext>`, normalized on its own
grid, then resampled in world coordinates with MONAI's ResampleToMatch onto the working grid
(the reference's own, or its field of view at the plan's spacing). The result is one
(M, ...) image in modality order, NaN where a modality has no data.
"""

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    EnsureChannelFirst,
    LoadImage,
    MapTransform,
    ResampleToMatch,
)

from lib.errors import InvalidInput, NotFound
from lib.transforms.grid import resize_image, voxel_spacing, working_shape
from lib.transforms.intensity import normalize

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
# Below this fraction of reference voxels covered, a companion "does not overlap" the reference.
MIN_OVERLAP = 0.2


def case_id_of(path: str | Path) -> str:
    name = Path(path).name
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def companion_path(reference: str | Path, modality: str) -> Path | None:
    """The companion file of `modality` for a reference image file, or None if there is none."""
    folder = Path(reference).parent / modality
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{case_id_of(reference)}{ext}"
        if candidate.is_file():
            return candidate
    return None


def load_volume(path: str | Path, what: str) -> MetaTensor:
    """A 3D image as a (1, X, Y, Z) float MetaTensor with its affine; unreadable or non-3D -> InvalidInput."""
    try:
        image = LoadImage(image_only=True, dtype=np.float32)(str(path))
    except Exception as e:  # readers raise many types for a corrupt or non-image file
        raise InvalidInput(f"{what} ({Path(path).name}) is not a readable image: {e}") from e
    image = EnsureChannelFirst(channel_dim="no_channel")(image) if image.ndim == 3 else image
    if image.ndim != 4 or image.shape[0] != 1:
        raise InvalidInput(f"{what} ({Path(path).name}) must be a single 3D volume, got shape {tuple(image.shape)}")
    return image


class LoadModalitiesd(MapTransform):
    """`data[key]` (reference file path) -> (M, X, Y, Z) MetaTensor on the working grid.

    The working grid is the reference's own grid, or with `spacing` the same field of view at that
    spacing (lib.transforms.grid). Each companion is resampled onto it in world coordinates; voxels
    where a companion has no data (outside its field of view) are NaN in its channel, which the
    network and the losses read as "no data here". Adds `present` (bool, (M,)), and
    `reference_shape` and `reference_affine` (the reference's own grid, where results go back to).
    A missing companion is absent (all NaN, present False) when `allow_missing`, else NotFound; a
    companion that covers less than MIN_OVERLAP of the reference in world space is InvalidInput.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        key: Hashable = "image",
        allow_missing: bool = True,
        spacing: Sequence[float] | None = None,
    ):
        super().__init__(keys=[key])
        self.modalities = list(modalities)
        self.key = key
        self.allow_missing = allow_missing
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        reference_path = d[self.key]
        reference = load_volume(reference_path, f"{self.modalities[0].upper()} image")
        d["reference_shape"] = tuple(reference.shape[1:])
        d["reference_affine"] = reference.affine.clone()
        if self.spacing is not None:
            shape = working_shape(reference.shape[1:], voxel_spacing(reference.affine), self.spacing)
            reference = resize_image(reference, shape)
        channels = [normalize(reference, self.modalities[0])]
        present = [True]
        for modality in self.modalities[1:]:
            channel = self._companion(reference_path, reference, modality)
            channels.append(channel)
            present.append(bool((~torch.isnan(channel)).any()))
        d[self.key] = MetaTensor(torch.cat([torch.as_tensor(c) for c in channels]), meta=reference.meta)
        d["present"] = torch.tensor(present)
        return d

    def _companion(self, reference_path, reference: MetaTensor, modality: str) -> torch.Tensor:
        path = companion_path(reference_path, modality)
        case = case_id_of(reference_path)
        if path is None:
            if not self.allow_missing:
                raise NotFound(f"case {case} has no {modality.upper()} companion (expected {modality}/{case}.*)")
            logger.info(f"case {case}: no {modality} companion, serving without it")
            return torch.full_like(reference.as_tensor(), float("nan"))
        image = load_volume(path, f"{modality.upper()} companion of {case}")
        # box-filter it down towards the working grid's finest spacing first, so resampling does not alias
        own, finest = voxel_spacing(image.affine), min(voxel_spacing(reference.affine))
        image = resize_image(image, working_shape(image.shape[1:], own, [max(s, finest) for s in own]))
        image = normalize(image, modality)
        channel = ResampleToMatch(mode="bilinear", padding_mode="zeros")(image, reference)
        coverage = ResampleToMatch(mode="bilinear", padding_mode="zeros")(torch.ones_like(image), reference)
        inside = coverage > 0.999
        fraction = inside.float().mean().item()
        if fraction < MIN_OVERLAP:
            raise InvalidInput(
                f"the {modality.upper()} companion of {case} covers {100 * fraction:.1f}% of the reference image "
                f"in world coordinates (at least {100 * MIN_OVERLAP:.0f}% is needed): check that both scans "
                "are registered in the same scanner space"
            )
        return torch.where(inside, channel, float("nan")).as_tensor()
