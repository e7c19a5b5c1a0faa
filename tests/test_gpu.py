"""On CUDA devices: a training run on a GPU, and DDP over two or more through torchrun (nccl) and through the
train task's own `multi_gpu` spawn. Skipped without them; benchmarks/gpu_check.sh runs these."""

import json
import subprocess
import sys

import pytest
import torch

from lib.data.demo import write_demo
from lib.datastore import CmfnetDatastore
from lib.labels import DEMO_LABELS, LabelSet
from lib.model_files import read_model
from lib.planning import WIDTHS
from lib.settings import TrainSettings
from lib.trainers.cmfnet import CmFNetTrainer
from tests.conftest import free_port
from tests.ddp import assert_trained_in_step, torchrun

GPUS = torch.cuda.device_count()
needs_a_gpu = pytest.mark.skipif(GPUS < 1, reason="needs a CUDA device")
needs_gpus = pytest.mark.skipif(GPUS < 2, reason="needs two or more CUDA devices")
STEPS = 4


def demo(tmp_path, cases: int):
    write_demo(tmp_path / "demo", cases=cases, scribbled=cases, final=0, seed=0)
    return tmp_path / "demo" / "studies"


@needs_a_gpu
def test_a_training_run_on_a_gpu_publishes_the_large_network(tmp_path):
    command = [sys.executable, "-m", "lib.train_distributed", "--studies", str(demo(tmp_path, 2))]
    command += ["--model-dir", str(tmp_path / "model"), "--conf", "max_steps", str(STEPS), "--conf", "val_every", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    state, plan = read_model(tmp_path / "model" / "cmfnet.pt")
    assert plan.channels == WIDTHS["large"][: len(plan.channels)]  # `auto` picks the GPU preset
    assert all(torch.isfinite(value).all() for value in state.values())
    stats = json.loads((tmp_path / "model" / "cmfnet" / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["step"] == STEPS


@needs_gpus
def test_torchrun_over_two_gpus_trains_in_step_with_nccl(tmp_path):
    command = torchrun(2, demo(tmp_path, 4), tmp_path / "model", "max_steps", str(STEPS), "val_every", "2")
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "'distributed_backend': 'nccl'" in log
    assert_trained_in_step(log, tmp_path / "model", world_size=2, steps=STEPS)


@needs_gpus
def test_multi_gpu_in_the_train_task_spawns_one_process_per_gpu(tmp_path, capfd, monkeypatch):
    """The server's path: the train task's own request handling and BasicTrainTask's spawn, on every GPU."""
    studies = demo(tmp_path, 2 * GPUS)
    labels = LabelSet(DEMO_LABELS)
    task = CmFNetTrainer(
        model_dir=str(tmp_path / "model" / "cmfnet"),
        labels=labels,
        modalities=["ct", "mr"],
        publish_path=str(tmp_path / "model" / "cmfnet.pt"),
        defaults=TrainSettings(),
    )
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # as MONAI Label sets them for its training subprocess
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    datastore = CmfnetDatastore(str(studies), labels=labels, companions=["mr"])
    task({"max_steps": STEPS, "val_every": 2, "multi_gpu": True}, datastore)
    assert_trained_in_step(capfd.readouterr().err, tmp_path / "model", world_size=GPUS, steps=STEPS)
