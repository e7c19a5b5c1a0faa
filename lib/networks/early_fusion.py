"""Early fusion: one MONAI UNet with every modality as an input channel, behind CmFNet's interface.

The baseline that CmFNet's separate encoders and learned fusion must beat (`network: "unet"`). It
has no per-modality outputs, so the hybrid loss reduces to its supervised terms for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import Tensor, nn

from lib.networks.cmfnet import INSTANCE_NORM, CmFNetOutput


class EarlyFusionUNet(nn.Module):
    def __init__(
        self, num_modalities: int, num_classes: int, channels: Sequence[int], strides: Sequence[Sequence[int]]
    ) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.strides = tuple(tuple(s) for s in strides)
        self.unet = UNet(3, num_modalities, num_classes, channels, self.strides, num_res_units=2, norm=INSTANCE_NORM)

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """Logits from the modalities as channels; absent modalities and voxels without data are 0."""
        keep = ~torch.isnan(x)
        if present is not None:
            keep = keep & present.to(x.device).reshape(-1, self.num_modalities, 1, 1, 1).expand_as(x)
        return self.unet(torch.where(keep, x, 0.0))

    def forward_all(self, x: Tensor, present: Tensor | None = None) -> CmFNetOutput:
        if present is None:
            present = torch.ones(x.shape[0], self.num_modalities, dtype=torch.bool, device=x.device)
        return CmFNetOutput(fused=self(x, present), per_modality=[], features=[], present=present)
