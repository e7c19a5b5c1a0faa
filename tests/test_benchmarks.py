"""The benchmark commands end to end with tiny budgets: they run the product's code, write their results,
and the numbers are in range. The numbers themselves mean nothing at these budgets."""

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from benchmarks import accuracy, paired, speed
from benchmarks.common import RESULTS, ROOT
from lib.markdown import write_between_markers


def test_accuracy_smoke_trains_through_the_train_task_and_scores_every_case(tmp_path):
    results = accuracy.main(["--smoke", "--out", str(tmp_path)])
    (row,) = results["rows"]
    assert row["method"] == "cmfnet" and row["steps"] >= 1
    assert set(row["model_alone"]["cases"]) == {"test_0", "test_1", "test_2"}  # never-stroked phantoms
    for per_class in row["model_alone"]["cases"].values():
        assert per_class and all(0.0 <= v <= 1.0 for v in per_class.values())
    # scored again with the MR absent: every case, and not the same answers (the MR was really left out)
    assert set(row["ct_alone"]["cases"]) == set(row["model_alone"]["cases"])
    assert row["ct_alone"]["cases"] != row["model_alone"]["cases"]
    assert row["curve"] and all(0.0 <= p["mean"] <= 1.0 for p in row["curve"])
    meta = results["datasets"]["phantom"]
    assert 0.001 < meta["annotated_fraction"] < 0.05
    assert json.loads((tmp_path / "accuracy_smoke.json").read_text())["rows"][0]["method"] == "cmfnet"


def test_accuracy_with_nothing_to_run_says_why_and_leaves_the_results_alone(tmp_path):
    results = RESULTS / "accuracy.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    # a seed no run uses: a dataset cached from an earlier run would run without the scan (and rewrite results/)
    command = [sys.executable, "-m", "benchmarks.accuracy", "--data", "real", "--methods", "random_walker"]
    command += ["--seed", "987654"]
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


def _accuracy_run(folder, seed: int, dice: dict[str, float]):
    """An accuracy.json as benchmarks.accuracy writes it, with the given model-alone means on `real`."""
    rows = [{"dataset": "real", "method": m, "steps": 100 + seed, "model_alone": {"mean": v}} for m, v in dice.items()]
    rows.append({"dataset": "real", "method": "propagation", "served": {"mean": 0.5}})
    path = folder / f"seed{seed}" / "accuracy.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"machine": "CPU test", "command": "c", "seed": seed, "rows": rows}))
    return path


def test_paired_sums_up_the_differences_of_each_run_by_hand(tmp_path):
    files = [
        _accuracy_run(tmp_path, 0, {"cmfnet": 0.930, "early_fusion": 0.920}),
        _accuracy_run(tmp_path, 1, {"cmfnet": 0.925, "early_fusion": 0.927}),
        _accuracy_run(tmp_path, 2, {"cmfnet": 0.9302, "early_fusion": 0.9300}),
        _accuracy_run(tmp_path, 3, {"cmfnet": 0.99}),  # no pair: left out
    ]
    out = tmp_path / "out"
    comparison = paired.main([*map(str, files), "--out", str(out), "--no-readme"])
    differences = [0.010, -0.002, 0.0002]
    summary = comparison["summary"]["real"]
    assert summary["pairs"] == 3 and (summary["above"], summary["level"], summary["below"]) == (1, 1, 1)
    assert summary["mean"] == pytest.approx(sum(differences) / 3)
    assert summary["sd"] == pytest.approx(statistics.stdev(differences))
    half = 4.3027 * statistics.stdev(differences) / math.sqrt(3)  # Student's t, 2 degrees of freedom, 97.5 %
    assert summary["interval"] == pytest.approx([summary["mean"] - half, summary["mean"] + half], rel=1e-4)
    table = (out / "paired.md").read_text()
    assert "| real | 0 | 0.930 | 0.920 | +0.010 | 100 / 100 | CPU test |" in table
    assert "| real | 3 |" not in table
    assert json.loads((out / "paired.json").read_text())["pairs"][1]["dice"] == [0.925, 0.927]


def test_paired_pairs_two_runs_of_one_seed_that_scored_one_of_the_methods_each(tmp_path):
    for folder in "abc":
        (tmp_path / folder).mkdir()
    mine = _accuracy_run(tmp_path / "a", 0, {"self_training": 0.931, "cmfnet": 0.925})
    theirs = _accuracy_run(tmp_path / "b", 0, {"cmfnet": 0.926, "early_fusion": 0.924})
    theirs.write_text(theirs.read_text().replace("CPU test", "CPU other"))
    lone = _accuracy_run(tmp_path / "b", 1, {"early_fusion": 0.920})  # no self_training run of seed 1
    twice = [_accuracy_run(tmp_path / folder, 2, {"self_training": 0.93}) for folder in "ac"]
    twice.append(_accuracy_run(tmp_path / "b", 2, {"early_fusion": 0.92}))  # which self_training run? neither
    files = [mine, theirs, lone, *twice]
    args = ["--methods", "self_training,early_fusion", "--out", str(tmp_path / "out"), "--no-readme"]
    found = paired.main([*map(str, files), *args])["pairs"]
    assert [(p["seed"], p["dice"], p["machine"]) for p in found] == [(0, [0.931, 0.924], "CPU test; CPU other")]


def test_paired_without_a_pair_or_with_a_foreign_file_says_why(tmp_path, capsys):
    lone = _accuracy_run(tmp_path, 0, {"cmfnet": 0.93})
    with pytest.raises(SystemExit) as stopped:
        paired.main([str(lone), "--out", str(tmp_path), "--no-readme"])
    assert stopped.value.code == 1 and "scored both cmfnet and early_fusion on one data set" in capsys.readouterr().err
    foreign = tmp_path / "other.json"
    foreign.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit) as stopped:
        paired.main([str(foreign), "--out", str(tmp_path), "--no-readme"])
    assert stopped.value.code == 2 and "not a result of benchmarks.accuracy" in capsys.readouterr().err
    assert not (tmp_path / "paired.json").exists()
