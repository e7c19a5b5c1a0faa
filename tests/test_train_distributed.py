"""Data-parallel training on two CPU processes (gloo) on the demo data, through both launches: torchrun with
the entry point, and MONAI Label's own spawn that the train task uses with `multi_gpu`."""

import copy
import json
import re
import subprocess

import torch.multiprocessing as mp
from monailabel.tasks.train.basic_train import main_worker

from lib.configs.cmfnet import CmFNetConfig
from lib.data.demo import write_demo
from lib.train_distributed import open_datastore
from tests.conftest import free_port, running_server
from tests.ddp import assert_trained_in_step, torchrun

STEPS = 3


def test_torchrun_trains_on_each_ranks_own_cases_in_step_and_rank_0_publishes(tmp_path):
    write_demo(tmp_path / "demo", cases=4, scribbled=4, final=0, seed=0)
    command = torchrun(2, tmp_path / "demo" / "studies", tmp_path / "model", "max_steps", str(STEPS), "val_every", "2")
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert_trained_in_step(log, tmp_path / "model", world_size=2, steps=STEPS)
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
    assert_trained_in_step(capfd.readouterr().err, tmp_path / "model", world_size=2, steps=STEPS)
    assert json.loads((tmp_path / "model" / "cmfnet" / "train_stats.json").read_text())["status"] == "done"


def test_a_running_server_serves_what_a_torchrun_job_publishes_into_its_model_folder(tmp_path):
    write_demo(tmp_path / "demo", cases=4, scribbled=4, final=0, seed=0)
    studies = tmp_path / "demo" / "studies"
    with running_server(tmp_path, studies, {"auto_train": "false"}) as server:
        assert server.http.post("/infer/cmfnet?image=case_000&output=json").status_code == 409  # no model yet
        command = torchrun(2, studies, server.app_dir / "model", "max_steps", "2", "val_every", "2")
        run = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
        assert server.http.post("/infer/cmfnet?image=case_000&output=json").status_code == 200  # no restart
        stats = server.http.get("/info/").json()["train_stats"]["cmfnet"]  # the job's progress, in the server
        assert stats["status"] == "done" and stats["step"] == 2
