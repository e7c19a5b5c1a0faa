"""Data-parallel training (DDP) of the one recipe: what every process needs beyond MONAI Label's own launch.

Both launches end in `BasicTrainTask.train(rank, world_size, ...)`, which initialises the process
group and ignite's distributed context: MONAI Label's own (one process per GPU, spawned by the train
task when `multi_gpu` is on) and torchrun's (lib.train_distributed, one or more nodes). Then:

- every process takes rank 0's cases, plan and clock (:func:`from_rank0`), so all build the same
  network and count the same budget, and trains and validates on its own share of the cases
  (:func:`rank_share`);
- the network is wrapped so that `forward_all`, the training forward, goes through DDP's forward,
  which is what averages the gradients (:class:`DistributedNetwork`);
- the learning rate and the decision to stop are agreed each step (:func:`agreed_max`, used by
  lib.trainers.budget), or the processes would leave the step loop at different steps and wait for
  each other forever;
- each process logs what it trained on and a digest of its weights at the end (:class:`RankSummary`):
  equal digests show the processes stayed in step.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.data import partition_dataset
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def rank_share(items: Sequence, rank: int, world_size: int) -> list:
    """This process's share of the cases, every `world_size`-th from `rank`; all of them when there are
    fewer cases than processes (as BasicTrainTask does)."""
    if len(items) < world_size:
        return list(items)
    return partition_dataset(list(items), num_partitions=world_size, even_divisible=False)[rank]


def from_rank0(value: Any) -> Any:
    """Rank 0's `value` (anything JSON can carry) in every process; `value` itself without a process group."""
    if idist.get_world_size() == 1:
        return value
    text = json.dumps(value) if idist.get_rank() == 0 else None
    return json.loads(idist.broadcast(text, src=0, safe_mode=True))


def agreed_max(values: Sequence[float]) -> list[float]:
    """The largest of each value over all processes; the values themselves without a process group."""
    if idist.get_world_size() == 1:
        return list(values)
    return idist.all_reduce(torch.tensor(values, dtype=torch.float64), op="MAX").tolist()


class _ForwardAll(torch.nn.Module):
    """A network whose forward is its `forward_all`."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None):
        return self.network.forward_all(x, present)


class DistributedNetwork(DistributedDataParallel):
    """DDP around a CmFNet-like network, for training: `forward_all` runs through DDP's forward.

    Calling the wrapped network's own `forward_all` would skip the gradient averaging. DDP needs a
    gradient for every parameter at every step: the partial cross-entropy (`loss.pce` > 0, the default)
    reaches every output, even of a modality dropped from the batch. Validation uses :attr:`network`,
    outside DDP.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device):
        device_ids = [device.index] if device.type == "cuda" else None
        super().__init__(_ForwardAll(network), device_ids=device_ids)

    @property
    def network(self) -> torch.nn.Module:
        return self.module.network

    def forward_all(self, x: torch.Tensor, present: torch.Tensor | None = None):
        return self(x, present)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network itself, inside a DistributedNetwork or not."""
    return network.network if isinstance(network, DistributedNetwork) else network


def weights_digest(network: torch.nn.Module) -> str:
    """A short hash of the network's weights."""
    digest = hashlib.sha256()
    for value in network.state_dict().values():
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class RankSummary:
    """Logs, at the end of a run, this process's steps, the cases its batches came from and its weights' digest."""

    def __init__(self, network: torch.nn.Module, rank: int, world_size: int):
        self.network = network
        self.rank = rank
        self.world_size = world_size
        self.cases: set[str] = set()

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._seen)
        trainer.add_event_handler(Events.COMPLETED, self._summary)

    def _seen(self, trainer: Engine) -> None:
        self.cases.update(trainer.state.batch["case"])

    def _summary(self, trainer: Engine) -> None:
        logger.info(
            f"Rank {self.rank} of {self.world_size}: {trainer.state.iteration} steps on cases "
            f"{json.dumps(sorted(self.cases))}, weights {weights_digest(self.network)}"
        )
