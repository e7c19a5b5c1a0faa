"""A real MONAI Label server on 127.0.0.1 for tests and benchmarks: start it on a copy of the app, talk to it."""

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import torch

from lib.data.phantoms import CT_SHAPE, CT_SPACING
from lib.inference import build_network
from lib.labels import DEMO_LABELS
from lib.model_files import publish_model
from lib.planning import make_plan

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "cmfnet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, probe_url: str, log: Path, timeout: float, name: str) -> None:
    """Wait until `probe_url` answers 200; fail with the process's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(probe_url, timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{log.read_text()}")
        time.sleep(0.5)


def wait_for(condition, timeout: float, what: str):
    """Poll `condition` every second until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"{what}: not within {timeout} s")


@contextlib.contextmanager
def running_server(
    tmp: Path,
    studies: Path | str,
    conf: dict[str, str] | None = None,
    startup_timeout: float = 180,
    env: dict[str, str] | None = None,
    probe: str = "/info/",
):
    """Start `monailabel start_server` on a copy of the app (so models and logs stay in `tmp`).

    `env` adds environment variables, e.g. MONAI_LABEL_* settings; the server is up when `probe`
    answers 200 (with authentication on, pick a route that needs no token)."""
    app = tmp / "app"
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP / "main.py", app / "main.py")
    port = free_port()
    conf = {"models": "cmfnet", **(conf or {})}
    command = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(studies),
    ]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf.items():
        command += ["--conf", key, value]
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, f"{url}{probe}", tmp / "server.log", startup_timeout, "server")
        yield Server(url=url, app_dir=app, studies=studies, log=tmp / "server.log")
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its training subprocesses
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


class Server:
    def __init__(self, url: str, app_dir: Path, studies: Path, log: Path):
        self.url = url
        self.app_dir = app_dir
        self.studies = studies
        self.log = log
        # no kept-alive connections: uvicorn closes idle ones after 5 s, and a request sent as it does is reset
        self.http = httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_keepalive_connections=0))

    @property
    def model_file(self) -> Path:
        return self.app_dir / "model" / "cmfnet.pt"

    def infer_label(self, image_id: str) -> nib.Nifti1Image:
        """`/infer/cmfnet` on a datastore image, the label volume as NIfTI."""
        response = self.http.post(f"/infer/cmfnet?image={image_id}&output=image")
        assert response.status_code == 200, response.text
        content = response.content
        return nib.Nifti1Image.from_bytes(gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content)

    def train(self, params: dict, timeout: float = 600) -> dict:
        """Start a training run and wait for it to finish; returns the finished task."""
        response = self.http.post("/train/cmfnet", json=params)
        assert response.status_code == 200, response.text
        return self.wait_for_training(response.json()["id"], timeout)

    def train_runs(self) -> list[dict]:
        """Every training run so far, oldest first (`GET /train/?all=true`)."""
        response = self.http.get("/train/", params={"all": True})
        return response.json() if response.status_code == 200 else []

    def wait_until_idle(self, quiet_seconds: float = 4, timeout: float = 600) -> None:
        """Wait until no run has been queued or going for `quiet_seconds` (longer than the retrain delay plus
        its poll, so that no retrain is pending either)."""
        deadline, quiet_since = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() - quiet_since < quiet_seconds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"training did not stop within {timeout:.0f} s")
            if any(r["status"] in ("SUBMITTED", "RUNNING") for r in self.train_runs()):
                quiet_since = time.monotonic()
            time.sleep(0.5)

    def wait_for_retraining(self, runs_before: int, settle: float, timeout: float) -> list[dict]:
        """Wait, as a user watching the training status would, until new annotations have started a run (after
        `runs_before` runs), every run has ended and none followed within `settle` s; the new runs."""
        deadline, quiet_since = time.monotonic() + timeout, None
        while True:
            runs = self.train_runs()
            idle = len(runs) > runs_before and not any(r["status"] in ("SUBMITTED", "RUNNING") for r in runs)
            quiet_since = (quiet_since or time.monotonic()) if idle else None
            if quiet_since is not None and time.monotonic() - quiet_since > settle:
                return runs[runs_before:]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no retraining ended within {timeout:.0f} s: {runs[runs_before:]}")
            time.sleep(1)

    def wait_for_training(self, task_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.http.get("/train/", params={"all": True}).json()
            task = next(t for t in tasks if t["id"] == task_id)
            if task["status"] not in ("SUBMITTED", "RUNNING"):
                assert task["status"] == "DONE", json.dumps(task, indent=1)
                return task
            time.sleep(1)
        raise TimeoutError(f"training {task_id} did not finish in {timeout} s")


def publish_untrained_model(server: Server) -> None:
    """A real, untrained network with the demo's plan as the server's published model (geometry, errors, speed)."""
    plan = make_plan([CT_SPACING], [CT_SHAPE], num_modalities=2, num_classes=len(DEMO_LABELS) + 1)
    with torch.random.fork_rng():  # the same weights whatever ran before in this process
        torch.manual_seed(0)
        network = build_network(plan)
    publish_model(network, plan, server.model_file)
