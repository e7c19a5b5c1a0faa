"""Smoke tests of the benchmark commands with tiny settings (`--preset smoke`): they run end to end,
write their outputs and the README sections, and the numbers are sane. The numbers mean nothing."""

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import accuracy, speed
from benchmarks.common import write_between_markers
from benchmarks.methods import METHODS

README = (
    "# x\n\nbefore\n<!-- accuracy:start -->\nold\n<!-- accuracy:end -->\nmiddle\n"
    "<!-- speed:start -->\n<!-- speed:end -->\n"
)


def test_accuracy_command_writes_sane_results(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "results"
    summary = accuracy.main(["--preset", "smoke", "--out", str(out), "--readme", str(readme)])

    for name in ("accuracy.json", "accuracy.md", "accuracy_dice.png", "accuracy_overlay_phantom.png"):
        assert (out / name).stat().st_size > 0, name
    assert "phantom" in summary["datasets"]
    for data in summary["datasets"].values():
        assert set(data["methods"]) == {m.key for m in METHODS}
        for key, values in data["methods"].items():
            for stat in [*values["dice"].values(), values["mean_dice"]]:
                assert 0.0 <= stat[0] <= 1.0
            assert all(math.isfinite(s[0]) and s[0] >= 0 for s in values["hd95"].values())
            assert values["infer_seconds"][0] > 0
            assert (values["train_seconds"][0] > 0) == (key != "graphcut")
            assert 0 < values["annotated_fraction"][0] < 0.2
    text = readme.read_text()
    assert "old" not in text and "before" in text and "middle" in text
    assert "CmFNet (hybrid loss)" in text.split("<!-- accuracy:end -->")[0]
    recorded = json.loads((out / "accuracy.json").read_text())
    assert recorded["context"]["machine"] and recorded["runs"]

    # a second run reuses every cached result
    again = accuracy.main(["--preset", "smoke", "--out", str(out), "--no-readme", "--datasets", "phantom"])
    assert again["datasets"]["phantom"]["methods"]["cmfnet"] == summary["datasets"]["phantom"]["methods"]["cmfnet"]


def test_speed_command_writes_sane_results(tmp_path):
    out = tmp_path / "results"
    results = speed.main(["--preset", "smoke", "--out", str(out), "--no-readme", "--no-server"])
    assert (out / "speed.json").exists() and (out / "speed.md").exists()
    assert {row["model"] for row in results["inference"]} == {"cmfnet", "segresnet", "unet"}
    for row in results["inference"]:
        assert "error" not in row, row
        assert row["seconds"] > 0 and row["peak_mb"] > 0 and row["time_ratio"] > 0
    for row in results["training"]:
        assert "error" not in row, row
        assert row["iterations_per_second"] > 0 and row["peak_mb"] > 0
    assert results["machine"]


def test_server_timings_through_a_real_server():
    """The speed command's server part with fast settings (1 s retrain delay, one epoch on small patches)."""
    timings = speed.server_timings(speed.SMOKE_SERVER, torch.device("cpu"), timeout=600)
    assert timings["first_request_model_used"] is False and timings["second_request_model_used"] is True
    for key in (
        "server_start_seconds",
        "scribbles_latency_no_model_seconds",
        "scribbles_latency_with_model_seconds",
        "infer_latency_seconds",
    ):
        assert timings[key] > 0, key
    assert 0 < timings["scribbles_to_published_model_seconds"] <= timings["scribbles_to_model_in_use_seconds"]


def test_markers_are_replaced_and_nothing_else(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README)
    assert write_between_markers(path, "speed", "| a |")
    assert path.read_text() == README.replace("<!-- speed:start -->\n", "<!-- speed:start -->\n| a |\n")
    assert not write_between_markers(path, "nothing", "x")


@pytest.mark.parametrize("key", [m.key for m in METHODS if m.trained])
def test_every_trained_method_builds(key):
    from benchmarks.methods import METHODS_BY_KEY, TrainSettings, build_network

    settings = TrainSettings("small", (16, 16, 8), 1, 1, 1e-3, (16, 16, 8), {})
    network = build_network(METHODS_BY_KEY[key], settings, num_classes=4)
    assert hasattr(network, "forward_all")


def test_metrics_per_class():
    from benchmarks.metrics import per_class_metrics

    truth = np.zeros((20, 20, 10), np.uint8)
    truth[2:8, 2:8, 2:6] = 1
    truth[12:18, 12:18, 2:6] = 2
    same = per_class_metrics(truth, truth, 2, (1.0, 1.0, 2.0))
    assert same[1]["dice"] == pytest.approx(1.0) and same[1]["hd95"] == pytest.approx(0.0)
    missing = per_class_metrics(np.where(truth == 2, 0, truth), truth, 2, (1.0, 1.0, 2.0))
    assert missing[2]["dice"] == 0.0 and missing[2]["empty"]
    assert missing[2]["hd95"] == pytest.approx(np.linalg.norm([20.0, 20.0, 20.0]))  # the image diagonal in mm
    shifted = np.roll(truth, 1, axis=0)
    assert 0.5 < per_class_metrics(shifted, truth, 2, (1.0, 1.0, 2.0))[1]["dice"] < 1.0
