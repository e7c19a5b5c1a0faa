"""What the benchmark commands share: the machine they ran on, result files, README sections."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
CACHE = RESULTS / "cache"


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def describe_machine(device: torch.device) -> str:
    """One line naming what ran the benchmark, and how busy it was."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"CPU {model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"thread(s), load average {load:.1f} at the start"
    )


def write_results(name: str, data: dict, markdown: str, folder: Path = RESULTS) -> None:
    """<folder>/<name>.json and <folder>/<name>.md (results/ by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
    (folder / f"{name}.md").write_text(markdown)


class Stopwatch:
    """Seconds since creation, synchronizing a GPU first."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.start = time.perf_counter()

    def __call__(self) -> float:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.start
