"""What a CmFNet training run is made of, shared by the MONAI Label train task and the benchmarks:
the data pipeline (targets, held-out strokes, stroke-centred patches, augmentation) and one
optimisation step (modality dropout, forward through every path, hybrid loss)."""

import torch
from monai.transforms import (
    EnsureChannelFirstd,
    LoadImaged,
    RandCropByLabelClassesd,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from lib.labels import IGNORE
from lib.losses.hybrid import HybridLoss
from lib.networks.cmfnet import CmFNetOutput, random_modality_mask
from lib.transforms.modalities import LoadModalitiesd
from lib.transforms.targets import HoldOutStrokesd, LabelToTargetd

SPATIAL_KEYS = ["image", "label", "valid"]


def loading_transforms(modalities: list[str], num_classes: int) -> list:
    """`{"image": reference path, "label": label path, "dense": bool}` -> image (M, ...), target, valid."""
    return [
        LoadModalitiesd(modalities),
        LoadImaged(keys="label", image_only=True),
        EnsureChannelFirstd(keys="label", channel_dim="no_channel"),
        LabelToTargetd(num_classes),
    ]


def training_transforms(
    modalities: list[str], num_classes: int, patch_size: tuple[int, int, int], num_samples: int, hold_out: bool = True
) -> list:
    """Loading, then `num_samples` augmented patches per case, each centred on an annotated voxel."""
    return [
        *loading_transforms(modalities, num_classes),
        *([HoldOutStrokesd("train")] if hold_out else []),
        SpatialPadd(keys=["image", "valid"], spatial_size=patch_size),
        SpatialPadd(keys="label", spatial_size=patch_size, value=IGNORE),
        # patch centres drawn class by class from the annotated voxels: every patch holds strokes
        RandCropByLabelClassesd(
            keys=SPATIAL_KEYS,
            label_key="label",
            spatial_size=patch_size,
            num_classes=num_classes + 1,
            num_samples=num_samples,
            warn=False,
        ),
        # the same spatial augmentation for every modality, the target and the valid mask
        RandFlipd(keys=SPATIAL_KEYS, prob=0.5, spatial_axis=0),
        RandFlipd(keys=SPATIAL_KEYS, prob=0.5, spatial_axis=1),
        RandRotate90d(keys=SPATIAL_KEYS, prob=0.5, spatial_axes=(0, 1)),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ]


def hybrid_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: HybridLoss,
    batch: dict,
    step: int,
    modality_dropout: float,
    device: torch.device,
) -> tuple[CmFNetOutput, torch.Tensor, dict[str, float]]:
    """One optimisation step on a collated batch of `training_transforms` output."""
    image = batch["image"].to(device)
    target = batch["label"].to(device)
    present = with_dropout(batch["present"].to(device), modality_dropout)
    network.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        output = network.forward_all(image, present)
        loss, terms = loss_function(
            output,
            image,
            target,
            dense=batch["dense"].to(device),
            step=step,
            spacing=voxel_spacing(image),
            valid=batch["valid"].to(device),
        )
    loss.backward()
    optimizer.step()
    return output, loss, terms


def with_dropout(present: torch.Tensor, p_drop: float) -> torch.Tensor:
    """Modality dropout on top of the data's own presence; a sample never loses all modalities."""
    dropped = present & random_modality_mask(present.shape[0], present.shape[1], p_drop).to(present.device)
    return torch.where(dropped.any(dim=1, keepdim=True), dropped, present)


def voxel_spacing(image) -> tuple[float, float, float]:
    """Voxel size in mm from the batch's (augmented) affine; 1 mm when the image has none."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return (1.0, 1.0, 1.0)
    affine = affine[0] if affine.ndim == 3 else affine
    return tuple(float(s) for s in torch.linalg.norm(affine[:3, :3].float(), dim=0))
