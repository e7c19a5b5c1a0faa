"""The one training recipe, used by the server's train task and by the benchmarks (through that task).

- **Data**: each case's modalities and label on the plan's working grid, strokes held out for
  validation (one in five 8^3 blocks), the remaining strokes propagated into pseudo labels with
  confidences; all of that is deterministic and cached. Then, per step, `batch_size` patches
  centred class by class on the pseudo labels (on the strokes without propagation), mild
  rotation/scaling and per-channel intensity changes. No mirroring: left and right organs are
  different classes.
- **Step** (:func:`hybrid_step`): companion-modality dropout (the reference is never dropped),
  every path of the network, the hybrid loss (lib.losses.hybrid).
- **Schedule**: AdamW; the learning rate decays polynomially with the run's progress, which is
  the larger of steps done / `max_steps` and time used / `max_minutes`, so a run bounded by time
  still ends at a low rate; a run that fine-tunes the published model warms up first.
- **Model**: a moving average of the weights (:func:`weight_average`) is what is validated and published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import (
    RandAffined,
    RandCropByLabelClassesd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from torch.optim.swa_utils import AveragedModel

from lib.labels import IGNORE
from lib.losses.hybrid import HybridLoss
from lib.networks.cmfnet import CmFNetOutput, random_modality_mask
from lib.planning import Plan
from lib.precision import precision_for
from lib.transforms.intensity import RandCompanionBiasFieldd
from lib.transforms.modalities import LoadModalitiesd
from lib.transforms.targets import HoldOutStrokesd, LoadTargetd, PropagateStrokesd

SPATIAL_KEYS = ["image", "label", "pseudo", "confidence"]
POLY_EXPONENT = 0.9  # nnU-Net's learning-rate decay
FINE_TUNE_WARMUP_STEPS = 20  # see learning_rate
AVERAGE_DECAY = 0.99  # see weight_average


def loading_transforms(plan: Plan, modalities: list[str], num_classes: int) -> list:
    """`{"image": reference path, "label": label path, "dense": bool}` -> image (M, ...) and target, working grid."""
    return [LoadModalitiesd(modalities, spacing=plan.spacing), LoadTargetd(num_classes)]


def cached_training_transforms(plan: Plan, modalities: list[str], num_classes: int, propagation: str) -> list:
    """The deterministic part of the training data: loading, held-out strokes removed, pseudo labels
    (`propagation`: a value of TrainSettings.propagation)."""
    return [
        *loading_transforms(plan, modalities, num_classes),
        HoldOutStrokesd("train"),
        PropagateStrokesd(num_classes, modalities[0], propagation),
    ]


def random_training_transforms(plan: Plan, num_classes: int, batch_size: int) -> list:
    """`batch_size` patches of one case and their augmentation, drawn anew at every step."""
    patch = plan.patch_size
    return [
        SpatialPadd(keys="image", spatial_size=patch, mode="edge"),
        SpatialPadd(keys=["label", "pseudo"], spatial_size=patch, value=IGNORE),
        SpatialPadd(keys="confidence", spatial_size=patch, value=0),
        # patch centres class by class: every class is seen, however small
        RandCropByLabelClassesd(
            keys=SPATIAL_KEYS,
            label_key="pseudo",
            spatial_size=patch,
            num_classes=num_classes + 1,
            num_samples=batch_size,
            warn=False,
        ),
        RandAffined(
            keys=SPATIAL_KEYS,
            prob=0.2,
            rotate_range=(0.17, 0.17, 0.17),
            scale_range=(0.1, 0.1, 0.1),
            mode=("bilinear", "nearest", "nearest", "bilinear"),
            padding_mode="border",
        ),
        RandCompanionBiasFieldd("image", prob=0.5),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5, channel_wise=True),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5, channel_wise=True),
        RandGaussianNoised(keys="image", prob=0.15, std=0.05),
    ]


def hybrid_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: HybridLoss,
    batch: dict,
    step: int,
    modality_dropout: float,
    device: torch.device,
    spacing: Sequence[float],
    balanced_strokes: bool = False,
) -> tuple[CmFNetOutput, torch.Tensor, dict[str, float]]:
    """One optimisation step on a collated batch of training patches (mixed precision: lib.precision).

    ``spacing`` is the patches' voxel size in mm (the plan's): cached patches lose their affine.
    """
    precision = precision_for(optimizer, device)
    # plain tensors: a MetaTensor runs every op of the step through its __torch_function__ (3-7 % of a CPU
    # step) to carry metadata the step never reads
    batch = {key: value.as_tensor() if isinstance(value, MetaTensor) else value for key, value in batch.items()}
    image = batch["image"].to(device)
    present = with_dropout(batch["present"].to(device), modality_dropout)
    network.train()
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        output = network.forward_all(image, present)
    output = CmFNetOutput(
        fused=output.fused.float(),
        per_modality=[p.float() for p in output.per_modality],
        features=[f.float() for f in output.features],
        present=output.present,
    )
    loss, terms = loss_function(
        output,
        image.float(),
        batch["label"].to(device),
        dense=batch["dense"].to(device),
        step=step,
        spacing=spacing,
        pseudo=batch["pseudo"].to(device),
        confidence=batch["confidence"].to(device),
        balanced_strokes=balanced_strokes,
    )
    precision.backward_and_step(loss, optimizer)
    return output, loss, terms


def with_dropout(present: torch.Tensor, p_drop: float) -> torch.Tensor:
    """Companion-modality dropout on top of the data's own presence; the reference (first) modality is
    never dropped: the server always has it."""
    keep = random_modality_mask(present.shape[0], present.shape[1], p_drop).to(present.device)
    keep[:, 0] = True
    return present & keep


def optimizer_for(network: torch.nn.Module, peak_learning_rate: float) -> torch.optim.AdamW:
    """AdamW over all of the network's weights, fused: one kernel for all ~260 tensors of CmFNet instead of
    a loop (on 2 CPU cores its step took 8-10 ms instead of 32-35 ms)."""
    return torch.optim.AdamW(network.parameters(), lr=peak_learning_rate, weight_decay=1e-4, fused=True)


def learning_rate(peak: float, progress: float, step: int, fine_tuning: bool) -> float:
    """nnU-Net's polynomial decay, peak * (1 - progress) ** 0.9 with progress in [0, 1]; a run that fine-tunes
    a published model ramps it up linearly over its first FINE_TUNE_WARMUP_STEPS steps (`step` counts from 1).

    The ramp because AdamW starts a run with empty moments: at the full rate its first steps move every
    weight by about the rate at once and undo much of what the published model had learned, which a short
    retraining after new strokes then spends its budget winning back."""
    rate = peak * (1.0 - min(max(progress, 0.0), 1.0)) ** POLY_EXPONENT
    return rate * min(1.0, step / FINE_TUNE_WARMUP_STEPS) if fine_tuning else rate


def run_progress(step: int, max_steps: int, elapsed: float, max_seconds: float) -> float:
    """How far a run is, 0..1: by steps or by time, whichever is further."""
    return max(step / max_steps, elapsed / max_seconds if math.isfinite(max_seconds) else 0.0)


def weight_average(network: torch.nn.Module) -> AveragedModel:
    """An exponential moving average of the network's weights (Polyak averaging), updated after every step
    with `update_parameters`; validation and publication use it (`.module`), not the last iterate.

    With batches of two patches the iterates scatter around the optimum; their average is the better model
    and moves less from one validation to the next. The decay warms up, min(AVERAGE_DECAY, (1 + n) / (10 + n))
    after n updates, so the average of a young run does not drag along its first, untrained weights."""

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        """All tensors of one device and dtype at once: one read of `updates` per step, not one per tensor
        (on a GPU each read waits for the device)."""
        if not averaged[0].is_floating_point():  # counters among the buffers are kept as they are
            torch._foreach_copy_(averaged, current)
            return
        decay = min(AVERAGE_DECAY, (1.0 + float(updates)) / (10.0 + float(updates)))
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    return AveragedModel(network, multi_avg_fn=average, use_buffers=True)
