"""The GPU check's dry run: every step of benchmarks/gpu_check.sh, small, on the CPU, and its report."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_ROW = re.compile(r"^\| (\w+) \| `(.+)` \| (.+?) \| \d+ \|$", re.MULTILINE)


def test_the_dry_run_runs_every_step_on_the_cpu_and_reports_them(tmp_path):
    command = ["benchmarks/gpu_check.sh", "--dry-run", "--work", str(tmp_path), "--out", str(tmp_path / "gpu.md")]
    run = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PY": sys.executable}, capture_output=True, text=True, timeout=600
    )
    report = (tmp_path / "gpu.md").read_text()
    steps = {name: (called, status) for name, called, status in STEP_ROW.findall(report)}
    assert list(steps) == ["tests", "speed", "real_scan", "train"], report
    assert "benchmarks.speed --smoke" in steps["speed"][0]
    # this check's own steps must work here; the benchmarks have their own tests (tests/test_benchmarks.py)
    assert steps["tests"][1] == steps["train"][1] == "ok", report
    assert (run.returncode == 0) == all(status == "ok" for _, status in steps.values())
    training = re.search(r"^\| 1 \| ([\d.]+) \| 2 \| ([\d.]+) \|", report, re.MULTILINE)
    assert training, report  # one process: seconds to the first published model, 2 steps, s/step
    assert "dry run on the CPU" in report
