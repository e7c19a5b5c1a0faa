"""The benchmark commands end to end with tiny budgets: they run the product's code, write their results,
and the numbers are in range. The numbers themselves mean nothing at these budgets."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import accuracy, speed
from benchmarks.common import RESULTS, ROOT
from lib.markdown import write_between_markers


def test_accuracy_smoke_trains_through_the_train_task_and_scores_every_case():
    results = accuracy.main(["--smoke"])
    (row,) = results["rows"]
    assert row["method"] == "cmfnet" and row["steps"] >= 1
    assert set(row["model_alone"]["cases"]) == {"test_0", "test_1", "test_2"}  # never-stroked phantoms
    for per_class in row["model_alone"]["cases"].values():
        assert per_class and all(0.0 <= v <= 1.0 for v in per_class.values())
    assert row["curve"] and all(0.0 <= p["mean"] <= 1.0 for p in row["curve"])
    meta = results["datasets"]["phantom"]
    assert 0.001 < meta["annotated_fraction"] < 0.05
    assert json.loads((RESULTS / "accuracy_smoke.json").read_text())["rows"][0]["method"] == "cmfnet"


def test_accuracy_with_nothing_to_run_says_why_and_leaves_the_results_alone(tmp_path):
    results = RESULTS / "accuracy.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    command = [sys.executable, "-m", "benchmarks.accuracy", "--data", "real", "--methods", "random_walker"]
    environment = {**os.environ, "CMFNET_SHARED_DATA": str(tmp_path / "absent")}
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1
    assert "real: skipped (real scan not available" in finished.stdout
    assert "no method ran on any dataset" in finished.stderr
    assert (results.stat().st_mtime_ns if results.exists() else None) == before


def test_speed_smoke_times_the_shipped_training_step():
    results = speed.main(["--smoke"])
    step = results["step"]
    assert step["cmfnet_hybrid"]["seconds"] > 0 and step["unet_pce"]["seconds"] > 0
    assert step["ratio"] == pytest.approx(step["cmfnet_hybrid"]["seconds"] / step["unet_pce"]["seconds"])
    assert "Training step" in (RESULTS / "speed_smoke.md").read_text()


def test_readme_sections_are_replaced_between_their_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- speed:start -->\nold\n<!-- speed:end -->\nafter\n")
    assert write_between_markers(readme, "speed", "new table")
    assert readme.read_text() == "before\n<!-- speed:start -->\nnew table\n<!-- speed:end -->\nafter\n"
    assert not write_between_markers(readme, "accuracy", "x")
