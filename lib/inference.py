"""Running a trained network on a case: the network from its plan, and the one sliding-window inferer
that inference, validation and the benchmarks share."""

from __future__ import annotations

import torch
from monai.inferers import SlidingWindowInferer

from lib.networks.cmfnet import CmFNet
from lib.networks.early_fusion import EarlyFusionUNet
from lib.planning import Plan
from lib.precision import autocast, autocast_dtype


def build_network(plan: Plan) -> torch.nn.Module:
    """The network a plan describes (untrained)."""
    networks = {"cmfnet": CmFNet, "unet": EarlyFusionUNet}
    return networks[plan.network](plan.num_modalities, plan.num_classes, channels=plan.channels, strides=plan.strides)


def sliding_window_inferer(plan: Plan, device: torch.device | str) -> SlidingWindowInferer:
    """Windows of the plan's patch size with gaussian blending; more overlap where compute is cheap (GPU)."""
    overlap = 0.5 if torch.device(device).type == "cuda" else 0.25
    return MixedPrecisionInferer(
        autocast_dtype(device), roi_size=plan.patch_size, sw_batch_size=2, overlap=overlap, mode="gaussian"
    )


class MixedPrecisionInferer(SlidingWindowInferer):
    """MONAI's sliding-window inferer with each window's forward pass in the training's autocast dtype
    (lib.precision); the windows' scores are blended in float32."""

    def __init__(self, dtype: torch.dtype | None, **kwargs):
        super().__init__(**kwargs)
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        def forward(window: torch.Tensor, *window_args, **window_kwargs) -> torch.Tensor:
            with autocast(window.device, self.dtype):
                return network(window, *window_args, **window_kwargs).float()

        return super().__call__(inputs, forward, *args, **kwargs)
