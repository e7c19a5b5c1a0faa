"""Intensity conventions: how each modality is normalized, and what CT values mean."""

from collections.abc import Mapping

import torch
from monai.transforms import MapTransform, NormalizeIntensity, RandBiasField, RandomizableTransform, ScaleIntensityRange

# CT soft-tissue window mapped to [-1, 1]
CT_WINDOW_HU = (-250.0, 350.0)
CT_CLAMP = 3.0
# Below this, CT shows air: outside the body, or gas in the bowel
CT_AIR_HU = -500.0


def normalize(image: torch.Tensor, modality: str) -> torch.Tensor:
    """CT: the soft-tissue window mapped to [-1, 1] (values outside kept, clamped to [-3, 3]);
    any other modality: z-score over its non-zero voxels (MR has no absolute scale)."""
    if modality == "ct":
        low, high = CT_WINDOW_HU
        return ScaleIntensityRange(a_min=low, a_max=high, b_min=-1.0, b_max=1.0)(image).clamp(-CT_CLAMP, CT_CLAMP)
    return NormalizeIntensity(nonzero=True)(image)


def hu_to_normalized(hu: float) -> float:
    """A CT value in HU on the scale `normalize` gives CT."""
    low, high = CT_WINDOW_HU
    return max(-CT_CLAMP, min(CT_CLAMP, 2.0 * (hu - low) / (high - low) - 1.0))


class RandCompanionBiasFieldd(MapTransform, RandomizableTransform):
    """A random smooth multiplicative bias field (MONAI's RandBiasField, about +-20 % within a patch at the
    default range) on every channel of `key` but the first, the reference: MR intensities drift across a
    scan and from one scanner to the next, CT values are absolute. Channels are z-scores (see `normalize`),
    so the field scales each one about its darkest voxel, as it would scale raw intensities about zero;
    NaN (no data) stays NaN."""

    def __init__(self, key: str = "image", prob: float = 0.5, coeff_range: tuple[float, float] = (-0.05, 0.05)):
        MapTransform.__init__(self, keys=[key])
        RandomizableTransform.__init__(self, prob)
        self.key = key
        self.field = RandBiasField(coeff_range=coeff_range, prob=1.0)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.field.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.key]
        self.randomize(None)
        if not self._do_transform or image.shape[0] < 2:
            return d
        companions = image[1:]
        floor = torch.nan_to_num(companions, nan=torch.inf).flatten(1).amin(dim=1).view(-1, 1, 1, 1)
        floor = torch.where(torch.isfinite(floor), floor, 0.0)
        biased = self.field(companions - floor) + floor
        d[self.key] = torch.cat([image[:1], torch.as_tensor(biased, dtype=image.dtype)])
        return d
