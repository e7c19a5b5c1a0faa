"""The GPU check: what the product does on a CUDA machine, measured by one command into results/gpu.md.

    benchmarks/gpu_check.sh             # a CUDA machine after `make setup`; within 8 minutes on an H100
    benchmarks/gpu_check.sh --dry-run   # the same steps, small, on the CPU (tests/test_gpu_check.py runs it)

Steps, each a subprocess with its own time limit (a step that fails or runs out of time is reported
with the end of its output, and the next one runs):

1. **GPU tests**: tests/test_gpu.py and tests/unit/test_precision.py (mixed precision, a training run
   on the GPU, DDP over every GPU through torchrun and through the train task's own spawn).
2. **Speed**: the speed benchmark, `python -m benchmarks.speed` with the `large` preset; its own
   report is included as it is.
3. **Training on the real scan** (lib.data.real_scans, from ../shared/data or $CMFNET_SHARED_DATA; the
   demo phantoms when it is missing): the
   server's train task with its default settings, through lib.train_distributed in one process,
   bounded in time. Reported: the time from the start of the process to the first published model,
   seconds per step, steps, best held-out accuracy, and the peak GPU memory in use (nvidia-smi).
4. **Scaling**, with two or more GPUs: the same run with torchrun over all of them.

The commands are the `COMMANDS` below: change them there when a benchmark's flags change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from lib.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

GPU_TESTS = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py", "tests/unit/test_precision.py"]
# what each step runs, per mode; `{work}` is the working folder, `{studies}` the training datastore
COMMANDS = {
    "gpu": {
        "tests": GPU_TESTS,
        "speed": [
            PY,
            "-m",
            "benchmarks.speed",
            "--preset",
            "large",
            "--parts",
            "infer,networks,step",
            "--no-readme",
            "--out",
            "{work}/speed",
        ],
        "real_scan": [PY, "-m", "lib.data.real_scans", "--out", "{work}/abdomen"],
        "train": ["--conf", "max_minutes", "1.5"],  # the default settings, bounded in time
    },
    "dry": {
        "tests": GPU_TESTS,
        "speed": [
            PY,
            "-m",
            "benchmarks.speed",
            "--smoke",
            "--out",
            "{work}/speed",
        ],
        "real_scan": [PY, "-m", "lib.data.real_scans", "--out", "{work}/abdomen", "--ct-spacing", "8"],
        "train": ["--conf", "max_steps", "2", "--conf", "val_every", "2"],
    },
}
# seconds per step: on a GPU 75 + 150 + 30 + 120 + 90 = 465 s at most, inside the 8 minutes; the dry run's
# are for a small shared CPU
LIMITS = {
    "gpu": {"tests": 75, "speed": 150, "real_scan": 30, "train": 120, "scaling": 90},
    "dry": {"tests": 300, "speed": 300, "real_scan": 120, "train": 300},
}
BATCH = TrainSettings().batch_size  # patches per step and process, the default
PUBLISHED = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[rank 0\].*New model published")


@dataclass
class Step:
    name: str
    command: list[str]
    seconds: float = 0.0
    status: str = "not run"
    tail: str = ""
    output: str = field(default="", repr=False)


def run(step: Step, limit: float, env: dict | None = None) -> Step:
    """Run a step's command from the repository root; its status, time and output."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            step.command, cwd=ROOT, capture_output=True, text=True, timeout=limit, env={**os.environ, **(env or {})}
        )
        step.output = done.stdout + done.stderr
        step.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired as error:
        step.output = _text(error.stdout) + _text(error.stderr)
        step.status = f"stopped after {limit:.0f} s"
    step.seconds = time.monotonic() - start
    if step.status != "ok":
        step.tail = "\n".join(step.output.strip().splitlines()[-15:])
    return step


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


class GpuMemory:
    """Peak memory in use per GPU, sampled with nvidia-smi while a step runs (CUDA contexts included)."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self):
        query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self.every):
            try:
                lines = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in lines:
                index, used = (int(v) for v in line.split(","))
                self.peak[index] = max(self.peak.get(index, 0), used)


def training(mode: str, studies: Path, model_dir: Path, processes: int, limit: float) -> tuple[Step, dict]:
    """A training run of lib.train_distributed (torchrun over `processes` GPUs when more than one); its numbers."""
    launcher = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [PY]), "-m", "lib.train_distributed", "--studies", str(studies)]
    command += ["--model-dir", str(model_dir), *COMMANDS[mode]["train"]]
    started = datetime.now()
    with GpuMemory() as memory:
        step = run(Step("train" if processes == 1 else "scaling", command), limit)
    stats_file = model_dir / "cmfnet" / "train_stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    published = PUBLISHED.search(step.output)
    first = datetime.strptime(published.group(1), "%Y-%m-%d %H:%M:%S,%f") if published else None
    return step, {
        "processes": processes,
        "first_model_seconds": round((first - started).total_seconds(), 1) if first else None,
        "steps": stats.get("step"),
        "seconds_per_step": stats.get("seconds_per_step"),
        "best_held_out_accuracy": stats.get("best_metric"),
        "patch": stats.get("plan", {}).get("patch_size"),
        "peak_gpu_memory_mb": memory.peak,
    }


def machine() -> str:
    """What ran the check, in one line."""
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        gpus = f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        return f"{gpus}, CUDA {torch.version.cuda}, torch {torch.__version__}, {os.cpu_count()} CPU cores"
    return f"no GPU: CPU {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def report(mode: str, steps: list[Step], runs: list[dict], data: str, speed_md: str) -> str:
    """results/gpu.md."""
    title = "GPU check" + (" (dry run on the CPU: plumbing only, not measurements)" if mode == "dry" else "")
    lines = [
        f"# {title}",
        "",
        f"Command: `benchmarks/gpu_check.sh{' --dry-run' if mode == 'dry' else ''}` on {machine()}, "
        f"{datetime.now():%Y-%m-%d %H:%M}; {sum(s.seconds for s in steps):.0f} s in all.",
        "",
        "| step | command | status | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for step in steps:
        command = " ".join(Path(c).name if c == PY else c for c in step.command)
        lines.append(f"| {step.name} | `{command}` | {step.status} | {step.seconds:.0f} |")
    lines += ["", f"## Training with the default settings ({data})", ""]
    lines += [
        "| processes | start -> first published model (s) | steps | s/step | patches/s | best held-out accuracy | "
        "peak GPU memory in use (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for values in runs:
        rate, accuracy = values["seconds_per_step"], values["best_held_out_accuracy"]
        patches = f"{values['processes'] * BATCH / rate:.1f}" if rate else "-"
        memory = ", ".join(f"GPU {i}: {mb}" for i, mb in sorted(values["peak_gpu_memory_mb"].items())) or "-"
        lines.append(
            f"| {values['processes']} | {values['first_model_seconds']} | {values['steps']} | {rate} | {patches} | "
            f"{'-' if accuracy is None else f'{accuracy:.3f}'} | {memory} |"
        )
    lines += ["", f"Patch {runs[0]['patch'] if runs else '-'} (the plan's), {BATCH} patches per step and process."]
    lines += ["", "## Speed benchmark", "", speed_md.strip() or "(no report: see the step's status above)"]
    failed = [s for s in steps if s.status != "ok"]
    if failed:
        lines += ["", "## Steps that did not succeed", ""]
        for step in failed:
            lines += [f"**{step.name}**: {step.status}", "", "```", step.tail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step, small, on the CPU (the plumbing)")
    parser.add_argument("--out", type=Path, help="the report (default results/gpu.md; a dry run: <work>/gpu.md)")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "cache" / "gpu_check", help="scratch folder")
    args = parser.parse_args(argv)
    mode = "dry" if args.dry_run else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        parser.exit(2, "no CUDA device: run it on a GPU machine, or use --dry-run\n")
    env = {"CUDA_VISIBLE_DEVICES": ""} if mode == "dry" else {}
    os.environ.update(env)  # the dry run stays on the CPU even where a GPU is visible
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    commands = {k: [c.format(work=work) for c in v] for k, v in COMMANDS[mode].items() if k != "train"}

    limits = LIMITS[mode]
    steps = [run(Step(name, commands[name]), limits[name]) for name in ("tests", "speed", "real_scan")]
    speed_md = work / "speed" / ("speed_smoke.md" if args.dry_run else "speed.md")
    studies, data = work / "abdomen" / "studies", "the real abdominal CT with its simulated MR"
    if steps[-1].status != "ok":
        from lib.data.demo import write_demo

        studies, data = work / "demo" / "studies", "the demo phantoms: the real scan was not available"
        write_demo(work / "demo", cases=4, scribbled=4, final=0, seed=0)
    runs = []
    for processes in sorted({1, torch.cuda.device_count() if mode == "gpu" else 1}):
        model_dir = work / f"model_{processes}"
        shutil.rmtree(model_dir, ignore_errors=True)
        step, values = training(mode, studies, model_dir, processes, limits["train" if processes == 1 else "scaling"])
        steps.append(step)
        runs.append(values)
    out = args.out or (work / "gpu.md" if mode == "dry" else ROOT / "results" / "gpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(mode, steps, runs, data, speed_md.read_text() if speed_md.exists() else ""))
    print(f"wrote {out}")
    return 0 if all(s.status == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
