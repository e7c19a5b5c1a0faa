"""Accuracy benchmark (issue 5): every method on the same scribbles with the same iteration budget.

    python -m benchmarks.accuracy                    # --preset cpu: sized for a small CPU
    python -m benchmarks.accuracy --preset gpu       # larger volumes, patches, budget and more seeds

Writes results/accuracy.{json,md}, results/accuracy_dice.png, results/accuracy_overlay_<dataset>.png,
and the summary tables between the `accuracy` markers of README.md. Each (dataset, seed, method)
result is cached under results/cache/accuracy/<settings hash>/ (gitignored): a rerun with the same
settings only redoes what is missing (`--fresh` redoes everything). See benchmarks.methods for the
methods and benchmarks.datasets for the data and protocols.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from benchmarks import report
from benchmarks.common import CACHE, RESULTS, ROOT, describe_machine, pick_device, set_threads, settings_key
from benchmarks.datasets import Dataset, phantom_dataset, real_dataset, real_missing_reason
from benchmarks.methods import (
    METHODS,
    METHODS_BY_KEY,
    Method,
    TrainSettings,
    graphcut,
    load_for_evaluation,
    predict,
    train,
)
from benchmarks.metrics import per_class_metrics
from lib.losses.hybrid import HybridLoss, HybridLossWeights

logger = logging.getLogger("benchmarks.accuracy")

SERVER_ROI = (96, 96, 48)  # lib/configs/cmfnet.py's default sliding window


@dataclasses.dataclass(frozen=True)
class Preset:
    network: str
    phantom_grid_scale: float
    phantom_train: int
    phantom_test: int
    real_spacing: float | None  # None = the scan's native 3 mm
    patch_size: tuple[int, int, int]
    num_samples: int
    iterations: int
    learning_rate: float
    seeds: tuple[int, ...]
    hybrid: dict  # HybridLossWeights overrides for the hybrid methods ({} = the library defaults)
    threads: int | None  # torch CPU threads (None = torch's default)
    graphcut_native_grid: bool = False  # True: the graph cut on the image's own grid instead of its default
    affinity_sigma: float | None = None  # HybridLoss sigma_intensity for the hybrid methods (None = its default)


PRESETS: dict[str, Preset] = {
    # A shared 2-core CPU, well under an hour: phantoms on a half-resolution grid (48x48x24 at 7x7x10 mm),
    # the real scan at 6 mm, 32x32x16 patches; one torch thread (two stall when another job holds a core).
    "cpu": Preset("small", 0.5, 4, 3, 6.0, (32, 32, 16), 2, 400, 1e-2, (0, 1), {}, 1),
    # A GPU: demo-size phantoms (96x96x48 at 3.5x3.5x5 mm), the real scan at its native 3 mm, the train
    # task's default patch (64x64x32) and samples, 2000 iterations, three seeds.
    "gpu": Preset("small", 1.0, 8, 8, None, (64, 64, 32), 4, 2000, 1e-2, (0, 1, 2), {}, None),
    # Seconds, for the smoke test: numbers mean nothing.
    "smoke": Preset("small", 0.25, 1, 1, 12.0, (16, 16, 8), 1, 2, 1e-2, (0,), {}, 1, graphcut_native_grid=True),
}


def train_settings(preset: Preset, iterations: int, shape) -> TrainSettings:
    """The server's sliding window, but no larger than the volume (rounded up to the network's multiple)."""
    roi = tuple(min(r, -(-s // 8) * 8) for r, s in zip(SERVER_ROI, shape, strict=True))
    return TrainSettings(
        network=preset.network,
        patch_size=preset.patch_size,
        num_samples=preset.num_samples,
        iterations=iterations,
        learning_rate=preset.learning_rate,
        roi_size=roi,
        hybrid=dict(preset.hybrid),
        affinity_sigma=preset.affinity_sigma,
    )


def run_method(
    method: Method, dataset: Dataset, settings: TrainSettings, seed: int, device, folder: Path, native_grid: bool
) -> dict:
    """Train (unless the graph cut) and score one method on one dataset and seed; predictions saved in `folder`."""
    num_classes = dataset.num_classes
    names = {v: k for k, v in dataset.labels.items()}
    record = {"method": method.key, "dataset": dataset.name, "seed": seed, "cases": {}, "history": []}
    network = None
    if method.trained:
        start = time.perf_counter()
        items = [case.item(method.dense) for case in dataset.train]
        network, record["history"] = train(method, items, num_classes, settings, seed, device, log_every=50)
        record["train_seconds"] = time.perf_counter() - start
    else:
        record["train_seconds"] = 0.0
    infer_seconds = []
    predictions = {}
    for case in dataset.test:
        loaded = load_for_evaluation(case.item(dense=True), num_classes)
        truth = loaded["label"][0].numpy()
        start = time.perf_counter()
        if network is not None:
            prediction = predict(network, loaded, method.channels, settings.roi_size, device)
        else:
            scribbles = np.asarray(nib.load(case.scribbles).dataobj)
            affine = loaded["image"].affine.numpy()
            prediction = graphcut(case.image, scribbles, affine, num_classes, case.spacing if native_grid else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        infer_seconds.append(time.perf_counter() - start)
        metrics = per_class_metrics(prediction, truth, num_classes, case.spacing)
        record["cases"][case.case_id] = {names[c]: values for c, values in metrics.items()}
        predictions[case.case_id] = prediction
    record["infer_seconds_per_case"] = float(np.mean(infer_seconds))
    np.savez_compressed(folder / f"{method.key}_predictions.npz", **predictions)
    return record


def datasets_for(names: list[str], preset: Preset, seed: int, data_root: Path, split: str) -> list[Dataset]:
    found = []
    for name in names:
        if name == "phantom":
            found.append(
                phantom_dataset(
                    data_root, seed, preset.phantom_train, preset.phantom_test, preset.phantom_grid_scale, split
                )
            )
        elif name == "real":
            dataset = real_dataset(data_root, seed, preset.real_spacing)
            if dataset is None:
                logger.warning(f"skipping the real-scan dataset: {real_missing_reason()}")
            else:
                found.append(dataset)
        else:
            raise SystemExit(f"unknown dataset {name!r}; choose from phantom, real")
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument("--methods", default=",".join(m.key for m in METHODS), help="comma-separated method keys")
    parser.add_argument("--datasets", default="phantom,real", help="phantom and/or real")
    parser.add_argument("--seeds", help="comma-separated run seeds (default: the preset's)")
    parser.add_argument("--iterations", type=int, help="training iterations per method (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the preset's)")
    parser.add_argument(
        "--split",
        choices=["test", "tune"],
        default="test",
        help="phantom cases to score on: the test cases, or the tuning cases (for tuning only)",
    )
    parser.add_argument(
        "--loss", help="HybridLossWeights overrides for the hybrid methods, e.g. affinity=30,rampup_iterations=100"
    )
    parser.add_argument("--affinity-sigma", type=float, help="HybridLoss sigma_intensity for the hybrid methods")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (cache in <out>/cache)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README to update between markers")
    parser.add_argument("--no-readme", action="store_true", help="do not touch the README")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    command_start = time.perf_counter()
    preset = PRESETS[args.preset]
    if args.seeds:
        preset = dataclasses.replace(preset, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.loss:
        overrides = dict(item.split("=", 1) for item in args.loss.split(","))
        HybridLossWeights.from_dict(overrides)  # a clear error on unknown names or values
        preset = dataclasses.replace(preset, hybrid={**preset.hybrid, **overrides})
    if args.affinity_sigma is not None:
        preset = dataclasses.replace(preset, affinity_sigma=args.affinity_sigma)
    iterations = args.iterations or preset.iterations
    set_threads(args.threads or preset.threads)
    device = pick_device(args.device)
    methods = [METHODS_BY_KEY[k.strip()] for k in args.methods.split(",") if k.strip()]
    out = args.out
    cache = (out / "cache") if out != RESULTS else CACHE
    key = settings_key(
        {
            **dataclasses.asdict(preset),
            "iterations": iterations,
            "split": args.split,
            "seeds": None,
            # the library defaults the methods use (a tuned default must not reuse old results)
            "loss_defaults": dataclasses.asdict(HybridLossWeights()),
            "affinity_defaults": HybridLoss().affinity_options,
        }
    )
    run_root = cache / "accuracy" / key
    data_root = cache / "data"
    run_root.mkdir(parents=True, exist_ok=True)

    rows, datasets = [], {}
    for seed in preset.seeds:
        for dataset in datasets_for(args.datasets.split(","), preset, seed, data_root, args.split):
            datasets[dataset.name] = dataset
            settings = train_settings(preset, iterations, dataset.notes["shape"])
            folder = run_root / f"{dataset.name}_seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            for method in methods:
                cached = folder / f"{method.key}.json"
                if cached.exists() and not args.fresh:
                    record = json.loads(cached.read_text())
                    logger.info(f"{dataset.name} seed {seed} {method.key}: cached")
                else:
                    logger.info(f"{dataset.name} seed {seed} {method.key}: running")
                    record = run_method(method, dataset, settings, seed, device, folder, preset.graphcut_native_grid)
                    record["annotated_fraction"] = float(np.mean([c.annotated_fraction for c in dataset.train]))
                    cached.write_text(json.dumps(record, indent=1))
                rows.append(record)
                logger.info(f"  {report.one_line(record)}")

    context = {
        "command": " ".join(["python -m benchmarks.accuracy", *(sys.argv[1:] if argv is None else argv)]),
        "preset": args.preset,
        "settings": {**dataclasses.asdict(preset), "iterations": iterations},
        "split": args.split,
        "machine": describe_machine(device),
        "datasets": {name: {"protocol": d.protocol, "labels": d.labels} for name, d in datasets.items()},
        "skipped": [] if "real" in datasets or "real" not in args.datasets else [real_missing_reason()],
        "methods": {m.key: m.title for m in methods},
        "wall_seconds": time.perf_counter() - command_start,
        # training + scoring time of every run shown, cached or not (what a fresh run costs)
        "compute_seconds": sum(r["train_seconds"] + r["infer_seconds_per_case"] * len(r["cases"]) for r in rows),
    }
    context["overlay_seed"] = preset.seeds[-1]
    summary = report.write_accuracy(rows, context, out, run_root, datasets, preset.seeds[-1])
    if not args.no_readme and args.split == "test":
        if report.update_readme(args.readme, "accuracy", summary["readme"]):
            logger.info(f"README tables updated: {args.readme}")
        else:
            logger.warning(f"no accuracy markers in {args.readme}: README not updated")
    print(summary["markdown"])
    return summary


if __name__ == "__main__":
    main()
