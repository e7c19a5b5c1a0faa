"""The published model file: weights and the plan they were trained with, written so readers never see half.

A model file is a plain dict `{"model": state_dict, "plan": plan as JSON}` (torch.load with
weights_only reads it), so the network can always be rebuilt exactly as it was trained.

Publishing writes a temporary file in the same folder, reads it back, renames it over the
published path (atomic on one filesystem), and keeps the one it replaced as `<name>.previous`.
A published file that cannot be read is moved aside as `<name>.corrupt-<time>` and the previous
model takes its place, so the server heals instead of failing every request.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch

from lib.planning import Plan, save_plan_json

logger = logging.getLogger(__name__)


class UnreadableModel(Exception):
    """The file is missing, truncated, or not a model of this app."""


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def read_model(path: Path) -> tuple[dict, Plan]:
    """(state dict, plan) of a model file; UnreadableModel with the reason otherwise."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return checkpoint["model"], Plan.from_json(checkpoint["plan"])
    except FileNotFoundError:
        raise UnreadableModel(f"{path.name} does not exist") from None
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise UnreadableModel(f"{path.name} cannot be read as a model: {type(error).__name__}: {error}") from None


def weights_of(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the network's state dict, unaffected by later training steps."""
    return {name: value.detach().to("cpu", copy=True) for name, value in network.state_dict().items()}


def publish_model(network: torch.nn.Module | dict[str, torch.Tensor], plan: Plan, path: Path) -> None:
    """Write the model (a network, or weights from `weights_of`) atomically over `path`, keeping the one it
    replaces as `<name>.previous`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    state = network if isinstance(network, dict) else weights_of(network)
    torch.save({"model": state, "plan": plan.to_json()}, partial)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    read_model(partial)  # never publish what cannot be read back
    if path.exists():  # keep it as `.previous`, while `path` itself never disappears for readers
        kept = path.with_name(f".{path.name}.previous-{os.getpid()}")
        try:
            os.link(path, kept)
        except OSError:
            shutil.copyfile(path, kept)
        os.replace(kept, previous_path(path))
    os.replace(partial, path)
    save_plan_json(plan, path.with_suffix(".plan.json"))
    logger.info(f"New model published: {path} ({plan.describe()})")


class Publisher:
    """What a training run does with a model that validated well: `serve` publishes the network's current
    weights at once; `hold` keeps a copy of them instead, which `release` publishes later (lib.trainers.budget
    holds back a first model that has not yet learned every class)."""

    def __init__(self, network: torch.nn.Module, plan: Plan, path: Path):
        self.network, self.plan, self.path = network, plan, Path(path)
        self._held: dict[str, torch.Tensor] | None = None

    def serve(self) -> None:
        publish_model(self.network, self.plan, self.path)
        self._held = None

    def hold(self) -> None:
        self._held = weights_of(self.network)

    def release(self) -> None:
        if self._held is not None:
            publish_model(self._held, self.plan, self.path)
            self._held = None


def heal(path: Path, reason: str) -> bool:
    """Move an unreadable published model aside and put the previous one back; True when one was restored."""
    path = Path(path)
    if path.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, count = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
        while aside.exists():  # a second bad file within the same second keeps the first
            aside, count = path.with_name(f"{path.name}.corrupt-{stamp}-{count}"), count + 1
        os.replace(path, aside)
        logger.error(f"Published model {path.name} is unreadable ({reason}); moved aside to {aside.name}")
    previous = previous_path(path)
    try:
        read_model(previous)
    except UnreadableModel:
        return False
    os.replace(previous, path)
    logger.warning(f"Serving the previous model again: {previous.name} -> {path.name}")
    return True
