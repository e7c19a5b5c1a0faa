"""Data-parallel training on two CPU processes (gloo) on the demo data, through both launches: torchrun with
the entry point, and MONAI Label's own spawn that the train task uses with `multi_gpu`."""

import copy
import json
import re
import subprocess
import sys

import torch.multiprocessing as mp
from monailabel.tasks.train.basic_train import main_worker

from lib.configs.cmfnet import CmFNetConfig
from lib.data.demo import write_demo
from lib.model_files import read_model
from lib.train_distributed import open_datastore
from tests.conftest import free_port

SUMMARY = re.compile(r"Rank (\d) of 2: (\d+) steps on cases (\[.*?\]), weights ([0-9a-f]+)")
STEPS = 3


def assert_trained_in_step(log: str, model_dir) -> None:
    """Both ranks ran every step on cases of their own and ended with the same weights; a model was published."""
    summaries = {
        int(rank): (int(steps), json.loads(cases), digest) for rank, steps, cases, digest in SUMMARY.findall(log)
    }
    assert sorted(summaries) == [0, 1], log[-5000:]
    (steps_0, cases_0, weights_0), (steps_1, cases_1, weights_1) = summaries[0], summaries[1]
    assert steps_0 == steps_1 == STEPS
    assert cases_0 and cases_1 and not set(cases_0) & set(cases_1)  # each rank trained on its own cases
    assert weights_0 == weights_1  # gradients averaged: the same weights after different data
    state, plan = read_model(model_dir / "cmfnet.pt")  # published, complete, with its plan
    assert state and plan.num_modalities == 2
    assert not list(model_dir.glob(".*partial*"))


def test_torchrun_trains_on_each_ranks_own_cases_in_step_and_rank_0_publishes(tmp_path):
    write_demo(tmp_path / "demo", cases=4, scribbled=4, final=0, seed=0)
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "lib.train_distributed", "--studies", str(tmp_path / "demo" / "studies")]
    command += ["--model-dir", str(model_dir), "--conf", "max_steps", str(STEPS), "--conf", "val_every", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert_trained_in_step(log, model_dir)
    assert set(re.findall(r"\[rank (\d)\].*New model published", log)) == {"0"}  # by rank 0 alone


def test_the_train_tasks_own_multi_gpu_spawn_trains_the_same_way(tmp_path, capfd, monkeypatch):
    """BasicTrainTask's branch for two or more GPUs, run on CPUs with gloo (as it does on Windows)."""
    write_demo(tmp_path / "demo", cases=4, scribbled=4, final=0, seed=0)
    config = CmFNetConfig()
    config.init("cmfnet", str(tmp_path / "model"), {}, None)
    task = config.trainer()
    request = {
        **copy.deepcopy(task.config()),
        **task.run_request({"max_steps": STEPS, "val_every": 2, "multi_gpu": True}),
        "run_id": "spawn",
        "device": "cpu",
        "distributed_backend": "gloo",
    }
    datalist = task.pre_process(request, open_datastore(str(tmp_path / "demo" / "studies"), config))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the task shares the CPU threads out itself
    mp.spawn(main_worker, nprocs=2, args=(2, request, datalist, task))
    assert_trained_in_step(capfd.readouterr().err, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "cmfnet" / "train_stats.json").read_text())["status"] == "done"
