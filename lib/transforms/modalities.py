"""Load a case's modalities onto the reference grid (DESIGN §4).

The datastore image is the reference modality. Each companion is found by one rule,
`<folder of the reference file>/<modality>/<same case id>.<ext>`, normalized on its own
grid, then resampled onto the reference grid in world coordinates with MONAI's
ResampleToMatch. The result is one (M, ...) image in modality order, plus which
modalities are present and where each one has data.
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
    NormalizeIntensity,
    ResampleToMatch,
    ScaleIntensityRange,
)

from lib.errors import InvalidInput, NotFound

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


def normalize(image: torch.Tensor, modality: str) -> torch.Tensor:
    """CT: a soft-tissue window mapped to [-1, 1] (values outside kept, clamped to [-3, 3]);
    any other modality: z-score over its non-zero voxels (MR has no absolute scale)."""
    if modality == "ct":
        return ScaleIntensityRange(a_min=-250.0, a_max=350.0, b_min=-1.0, b_max=1.0)(image).clamp(-3.0, 3.0)
    return NormalizeIntensity(nonzero=True)(image)


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
    """`data[key]` (reference file path) -> (M, X, Y, Z) MetaTensor on the reference grid.

    Adds `present` (bool, (M,)) and `valid` ((M, X, Y, Z) float, 1 where that modality
    has data). A missing companion is absent (zeros, present False) when `allow_missing`,
    else NotFound; a companion that covers less than MIN_OVERLAP of the reference in world
    space is InvalidInput.
    """

    def __init__(self, modalities: Sequence[str], key: Hashable = "image", allow_missing: bool = True):
        super().__init__(keys=[key])
        self.modalities = list(modalities)
        self.key = key
        self.allow_missing = allow_missing

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        reference_path = d[self.key]
        reference = load_volume(reference_path, f"{self.modalities[0].upper()} image")
        channels = [normalize(reference, self.modalities[0])]
        valid = [torch.ones_like(reference)]
        present = [True]
        for modality in self.modalities[1:]:
            channel, mask = self._companion(reference_path, reference, modality)
            channels.append(channel)
            valid.append(mask)
            present.append(mask.any().item())
        image = MetaTensor(torch.cat([torch.as_tensor(c) for c in channels]), meta=reference.meta)
        d[self.key] = image
        d["present"] = torch.tensor(present)
        d["valid"] = torch.cat([torch.as_tensor(v) for v in valid]).float()
        return d

    def _companion(self, reference_path, reference: MetaTensor, modality: str):
        path = companion_path(reference_path, modality)
        case = case_id_of(reference_path)
        if path is None:
            if not self.allow_missing:
                raise NotFound(f"case {case} has no {modality.upper()} companion (expected {modality}/{case}.*)")
            logger.info(f"case {case}: no {modality} companion, serving without it")
            return torch.zeros_like(reference), torch.zeros_like(reference)
        image = normalize(load_volume(path, f"{modality.upper()} companion of {case}"), modality)
        resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
        channel = resample(image, reference)
        coverage = ResampleToMatch(mode="nearest", padding_mode="zeros")(torch.ones_like(image), reference)
        fraction = coverage.float().mean().item()
        if fraction < MIN_OVERLAP:
            raise InvalidInput(
                f"the {modality.upper()} companion of {case} covers {100 * fraction:.1f}% of the reference image "
                f"in world coordinates (at least {100 * MIN_OVERLAP:.0f}% is needed): check that both scans "
                "are registered in the same scanner space"
            )
        return channel.as_tensor(), coverage.as_tensor().float()
