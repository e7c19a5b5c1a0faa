"""Intra-modal regularizer: a 3D gated-CRF / local-affinity loss.

Hand-written because no maintained library offers a 3D gated CRF loss: MONAI has none, and the
gated CRF loss of Obukhov et al. (2019), as copied into WSL4MIS, is 2D only and measures distance
in pixels. This one works on 3D volumes in millimetres, so anisotropic spacing counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lib.neighbours import half_window, pair_views


def local_affinity_loss(
    probs: Tensor,
    image: Tensor,
    spacing: Sequence[float],
    kernel_size: int = 5,
    dilation: int = 1,
    sigma_intensity: float = 0.1,
    sigma_spatial: float = 5.0,
    valid: Tensor | None = None,
) -> Tensor:
    """Mean Potts disagreement between neighbouring voxels, weighted by their affinity.

        w_ij = exp(-|I_i - I_j|^2 / (2 sigma_intensity^2)) * exp(-|p_i - p_j|^2 / (2 sigma_spatial^2))
        loss = sum_{(i,j)} w_ij * (1 - <P_i, P_j>)  /  #(i,j)

    over the unordered pairs of distinct voxels i, j that are both valid and lie within one
    ``kernel_size``^3 window (neighbours ``dilation`` voxels apart). ``1 - <P_i, P_j>`` is the
    gated-CRF energy with Potts compatibility, sum_{a != b} P_i(a) P_j(b), since the probabilities
    sum to 1. Each unordered pair is counted once: w and the disagreement are symmetric, so this
    equals the mean over ordered pairs at half the work.

    Args:
        probs: (B, C, D, H, W) softmax probabilities.
        image: (B, 1, D, H, W) intensities of one modality; ``sigma_intensity`` is in its units
            (the default suits intensities scaled to about [0, 1]).
        spacing: voxel size in mm along the three spatial axes of the tensors, in their order;
            positions p are in mm, so ``sigma_spatial`` is too.
        valid: optional (B, 1, D, H, W) bool mask; pairs with an invalid end are left out.
    """
    if probs.ndim != 5 or image.shape != (probs.shape[0], 1, *probs.shape[2:]):
        raise ValueError(
            f"expected probs (B, C, D, H, W) and image (B, 1, D, H, W), got "
            f"{tuple(probs.shape)} and {tuple(image.shape)}"
        )
    if len(spacing) != 3:
        raise ValueError(f"spacing needs one value per spatial axis, got {tuple(spacing)}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")

    energy = probs.sum() * 0.0  # keeps the graph when no pair exists
    pairs = torch.zeros((), device=probs.device)
    for offset in half_window(kernel_size, dilation):
        if any(abs(d) >= size for d, size in zip(offset, probs.shape[2:], strict=True)):
            continue
        squared_mm = sum((d * s) ** 2 for d, s in zip(offset, spacing, strict=True))
        spatial = math.exp(-squared_mm / (2 * sigma_spatial**2))
        image_i, image_j = pair_views(image, offset)
        probs_i, probs_j = pair_views(probs, offset)
        weight = torch.exp(-((image_i - image_j) ** 2) / (2 * sigma_intensity**2)) * spatial
        cost = weight * (1.0 - (probs_i * probs_j).sum(dim=1, keepdim=True))
        if valid is None:
            energy = energy + cost.sum()
            pairs = pairs + cost.numel()
        else:
            valid_i, valid_j = pair_views(valid, offset)
            both = valid_i & valid_j
            energy = energy + torch.where(both, cost, 0.0).sum()
            pairs = pairs + both.sum()
    return energy / pairs.clamp(min=1)
