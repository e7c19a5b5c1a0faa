"""The compared methods, how each is trained (lib.training's pipeline and step, unchanged) and applied.

| key | network | input | supervision | loss |
| --- | --- | --- | --- | --- |
| cmfnet | CmFNet, M=2 | CT + MR | scribbles | full hybrid loss (HybridLossWeights defaults) |
| pce | CmFNet, M=2 | CT + MR | scribbles | partial CE only (affinity = consistency = alignment = 0) |
| ct_only | CmFNet, M=1 | CT channel | scribbles | full hybrid loss (no second modality to align) |
| mr_only | CmFNet, M=1 | MR channel | scribbles | full hybrid loss |
| early_fusion | MONAI UNet, CT + MR as input channels | CT + MR | scribbles | partial CE |
| full | CmFNet, M=2 | CT + MR | dense truth | dense CE + Dice (upper bound) |
| graphcut | MONAI Label HistogramBasedGraphCut | CT | scribbles of the scored case | none (no training) |

Every trained method runs the same data pipeline (`lib.training.training_transforms`, hold_out=False:
the benchmark scores on truth, not on held-out strokes), the same patches per seed and the same
`lib.training.hybrid_step`, for the same number of iterations. Single-modality methods take their
channel of the same CT+MR batch. The early-fusion UNet's width is chosen to match CmFNet's
parameter count (benchmarks.common.matched_unet).

The graph cut is MONAI Label's own task as shipped, one-vs-rest over the classes (benchmarks.graphcut).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose
from monai.utils import set_determinism

from benchmarks.common import SingleStream, matched_unet, parameter_count
from benchmarks.graphcut import graphcut  # noqa: F401 - the graphcut method, kept here with the others
from lib.losses.hybrid import HybridLoss, HybridLossWeights
from lib.networks.cmfnet import build_cmfnet
from lib.training import hybrid_step, loading_transforms, training_transforms

MODALITIES = ["ct", "mr"]
REGULARIZERS_OFF = {"affinity": 0.0, "consistency": 0.0, "alignment": 0.0}


@dataclass(frozen=True)
class Method:
    key: str
    title: str
    kind: str  # "cmfnet", "early_fusion" or "graphcut"
    channels: tuple[int, ...] = (0, 1)  # indices into MODALITIES
    loss: dict = field(default_factory=dict)  # HybridLossWeights overrides on top of the run's hybrid weights
    dense: bool = False  # trains on the dense truth instead of the scribbles
    modality_dropout: float = 0.2  # the train task's default

    @property
    def trained(self) -> bool:
        return self.kind != "graphcut"


METHODS: list[Method] = [
    Method("cmfnet", "CmFNet (hybrid loss)", "cmfnet"),
    Method("pce", "CmFNet, pCE only", "cmfnet", loss=REGULARIZERS_OFF),
    Method("ct_only", "CT only (CmFNet M=1, hybrid)", "cmfnet", channels=(0,)),
    Method("mr_only", "MR only (CmFNet M=1, hybrid)", "cmfnet", channels=(1,)),
    Method("early_fusion", "Early fusion (UNet, pCE)", "early_fusion", loss=REGULARIZERS_OFF, modality_dropout=0.0),
    Method("full", "Full supervision (CmFNet, dense)", "cmfnet", loss=REGULARIZERS_OFF, dense=True),
    Method("graphcut", "MONAI Label Histogram+GraphCut (CT)", "graphcut"),
]
METHODS_BY_KEY = {m.key: m for m in METHODS}


@dataclass(frozen=True)
class TrainSettings:
    network: str  # CmFNet preset
    patch_size: tuple[int, int, int]
    num_samples: int
    iterations: int
    learning_rate: float
    roi_size: tuple[int, int, int]  # sliding window for inference
    hybrid: dict  # HybridLossWeights fields for the hybrid methods
    affinity_sigma: float | None = None  # HybridLoss sigma_intensity; None = its default


def build_network(method: Method, settings: TrainSettings, num_classes: int) -> torch.nn.Module:
    if method.kind == "cmfnet":
        return build_cmfnet(settings.network, len(method.channels), num_classes + 1)
    if method.kind == "early_fusion":
        reference = parameter_count(build_cmfnet(settings.network, len(MODALITIES), num_classes + 1))
        depth = len(build_cmfnet(settings.network, 1, 2).channels)
        return SingleStream(matched_unet(reference, len(method.channels), num_classes + 1, depth=depth))
    raise ValueError(f"{method.key} has no network")


def loss_for(method: Method, settings: TrainSettings) -> HybridLoss:
    weights = HybridLossWeights.from_dict({**settings.hybrid, **method.loss})
    options = {} if settings.affinity_sigma is None else {"sigma_intensity": settings.affinity_sigma}
    return HybridLoss(weights, **options)


def select_channels(batch: dict, channels: Sequence[int]) -> dict:
    """The batch restricted to some modalities (image, presence and valid mask alike)."""
    if tuple(channels) == tuple(range(batch["image"].shape[1])):
        return batch
    index = list(channels)
    return {
        **batch,
        "image": batch["image"][:, index],
        "present": batch["present"][:, index],
        "valid": batch["valid"][:, index],
    }


def train(
    method: Method,
    items: list[dict],
    num_classes: int,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    log_every: int = 0,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train `method` for settings.iterations steps on `items` (lib.training's pipeline and step)."""
    set_determinism(seed)
    transforms = Compose(
        training_transforms(MODALITIES, num_classes, settings.patch_size, settings.num_samples, hold_out=False)
    )
    transforms.set_random_state(seed)
    dataset = CacheDataset(items, transforms, progress=False)
    loader = DataLoader(
        dataset, batch_size=1, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(seed)
    )
    network = build_network(method, settings, num_classes).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    # cosine decay to zero over the budget: a short run ends on small steps (the step itself is unchanged)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, settings.iterations) / settings.iterations))
    )
    loss_function = loss_for(method, settings)
    history = []
    step = 0
    while step < settings.iterations:
        for batch in loader:
            step += 1
            _, loss, terms = hybrid_step(
                network,
                optimizer,
                loss_function,
                select_channels(batch, method.channels),
                step,
                method.modality_dropout,
                device,
            )
            schedule.step()
            if log_every and (step % log_every == 0 or step == 1):
                history.append({"step": step, **terms})
            if step >= settings.iterations:
                break
    set_determinism(None)
    return network, history


def load_for_evaluation(case_item: dict, num_classes: int) -> dict:
    """CT + MR on the CT grid and the dense truth as a target, through the app's loading pipeline."""
    return Compose(loading_transforms(MODALITIES, num_classes))(case_item)


@torch.no_grad()
def predict(network: torch.nn.Module, loaded: dict, channels: Sequence[int], roi_size, device) -> np.ndarray:
    """Label map on the CT grid: sliding window as the server's infer task runs it."""
    network.eval()
    index = list(channels)
    image = loaded["image"][index][None].to(device)
    present = loaded["present"][index].to(device)
    inferer = SlidingWindowInferer(roi_size=roi_size, sw_batch_size=1, overlap=0.25, mode="gaussian")
    logits = inferer(image, network, present=present)
    return logits[0].argmax(0).cpu().numpy().astype(np.uint8)
