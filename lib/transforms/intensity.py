"""Intensity conventions: how each modality is normalized, and what CT values mean."""

import torch
from monai.transforms import NormalizeIntensity, ScaleIntensityRange

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
