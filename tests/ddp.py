"""Shared by the data-parallel training tests: the torchrun command and what a run that stayed in step logs."""

import json
import re
import sys
from pathlib import Path

from lib.model_files import read_model

# lib.distributed.RankSummary's line
SUMMARY = re.compile(r"Rank (\d+) of (\d+): (\d+) steps on cases (\[.*?\]), weights ([0-9a-f]+)")


def torchrun(processes: int, studies: Path, model_dir: Path, *conf: str) -> list[str]:
    """The entry point under torchrun on this machine; `conf`: `--conf` key, value pairs, flattened."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += ["-m", "lib.train_distributed", "--studies", str(studies), "--model-dir", str(model_dir)]
    for key, value in zip(conf[::2], conf[1::2], strict=True):
        command += ["--conf", key, value]
    return command


def assert_trained_in_step(log: str, model_dir: Path, world_size: int, steps: int) -> None:
    """Every rank ran every step on cases of its own and ended with the same weights; a model was published."""
    ranks = {int(r): (int(s), json.loads(c), w) for r, n, s, c, w in SUMMARY.findall(log) if int(n) == world_size}
    assert sorted(ranks) == list(range(world_size)), log[-5000:]
    assert {done for done, _, _ in ranks.values()} == {steps}
    cases = [set(seen) for _, seen, _ in ranks.values()]
    assert all(cases) and len(set().union(*cases)) == sum(map(len, cases))  # each rank trained on its own cases
    assert len({weights for _, _, weights in ranks.values()}) == 1  # gradients averaged: the same weights
    state, plan = read_model(model_dir / "cmfnet.pt")  # published, complete, with its plan
    assert state and plan.num_modalities == 2
    assert not list(model_dir.glob(".*partial*"))
