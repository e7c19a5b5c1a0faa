"""What both benchmark commands share: device and threads, the matched MONAI baselines, timing, caching."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import SegResNet, UNet
from torch import nn

from lib.networks.cmfnet import INSTANCE_NORM, CmFNetOutput

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
CACHE = RESULTS / "cache"


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads; on a small shared CPU one thread avoids oversubscription stalls."""
    if threads:
        torch.set_num_threads(threads)


def describe_machine(device: torch.device) -> str:
    """One line naming what ran the benchmark."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"CPU {model or cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s)"
    )


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def matched_unet(target_parameters: int, in_channels: int, out_channels: int, depth: int = 4) -> UNet:
    """A MONAI UNet (2 residual units per level, stride 2) whose width is chosen so that its parameter count
    is the closest to `target_parameters`; `depth` levels, so sizes divisible by 2**(depth-1). Its norm is
    CmFNet's (instance norm with affine parameters), so the comparison is of the architectures alone."""

    def build(base: int) -> UNet:
        channels = tuple(base * 2**level for level in range(depth))
        return UNet(3, in_channels, out_channels, channels, (2,) * (depth - 1), num_res_units=2, norm=INSTANCE_NORM)

    return _closest(build, range(2, 129, 2), target_parameters)


def _closest(build: Callable[[int], nn.Module], widths, target: int) -> nn.Module:
    """The network of the width whose parameter count is closest to `target` (counts grow with the width)."""
    best = None
    for width in widths:
        network = build(width)
        if best is None or abs(parameter_count(network) - target) < abs(parameter_count(best) - target):
            best = network
        if parameter_count(network) > target:
            break
    return best


def matched_segresnet(target_parameters: int, in_channels: int, out_channels: int) -> SegResNet:
    """A MONAI SegResNet (its default blocks) with `init_filters` (a multiple of 8, for its group norm) chosen
    so that its parameter count is the closest to `target_parameters`."""

    def build(filters: int) -> SegResNet:
        return SegResNet(3, init_filters=filters, in_channels=in_channels, out_channels=out_channels)

    return _closest(build, range(8, 129, 8), target_parameters)


class SingleStream(nn.Module):
    """A plain single-stream network behind the interface `lib.training.hybrid_step` calls: `forward_all`
    returns the network's logits as the fused output and no per-modality outputs, so the hybrid loss
    reduces to its supervised terms (and regularizers, if weighted, have nothing per modality to act on)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(x)

    def forward_all(self, x: torch.Tensor, present: torch.Tensor | None = None) -> CmFNetOutput:
        if present is None:
            present = torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        return CmFNetOutput(fused=self.network(x), per_modality=[], features=[], present=present)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable, device: torch.device):
    """(result, seconds) of `function()`, synchronizing the GPU before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def settings_key(settings: dict) -> str:
    """A short stable hash of a JSON-able settings dict, for cache folder names."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def write_between_markers(path: Path, name: str, content: str) -> bool:
    """Replace what lies between `<!-- name:start -->` and `<!-- name:end -->` in `path`; False if no markers."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if not path.exists():
        return False
    text = path.read_text()
    if start not in text or end not in text or text.index(start) > text.index(end):
        return False
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{content.strip()}\n{end}{after}")
    return True
