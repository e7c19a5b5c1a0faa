"""Accuracy of the methods on the same strokes and the same wall-clock budget (benchmarks/README.md).

    python -m benchmarks.accuracy                     # every dataset and method; 8 minutes each
    python -m benchmarks.accuracy --data real --methods cmfnet,random_walker --minutes 4
    python -m benchmarks.accuracy --data phantom --methods cmfnet,dense --merge   # add to the last run
    python -m benchmarks.accuracy --smoke             # seconds: the suite runs it
    python -m benchmarks.accuracy --data real --methods cmfnet,early_fusion --seed 2 --out results/cache/seeds/real_2

Writes results/accuracy.{json,md}, results/accuracy_curve.png and the README's `accuracy` section; with
`--out`, the json, md and png in that folder and the README left alone (one run of several seeds, for
benchmarks.paired).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks import one_hot

from benchmarks import datasets, methods
from benchmarks.common import CACHE, RESULTS, ROOT, describe_machine, pick_device, write_results
from benchmarks.report import accuracy_markdown, plot_curves
from lib.markdown import write_between_markers

DEFAULT_METHODS = [*methods.TRAINED, *methods.UNTRAINED]


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, scored: np.ndarray, labels: dict) -> dict[str, float]:
    """MONAI DiceMetric per class over the scored voxels (classes absent from the scored truth are left out)."""
    k = len(labels)
    as_onehot = [
        one_hot(torch.as_tensor(np.where(scored, a, 0).astype(np.int64))[None, None], k + 1)
        for a in (prediction, truth)
    ]
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(*as_onehot)[0]
    return {name: float(dice[i - 1]) for name, i in labels.items() if (truth[scored] == i).any()}


def score(dataset: datasets.Dataset, predict) -> dict:
    """{"cases": {case: {class: dice}}, "mean": mean Dice over cases and classes, "seconds_per_case"}."""
    cases, start = {}, time.perf_counter()
    for case in dataset.cases:
        truth, scored = case.arrays()
        if not scored.any():
            continue
        cases[case.case_id] = dice_per_class(predict(case), truth, scored, dataset.labels)
    if not cases:
        raise ValueError(f"{dataset.name}: no case has voxels to score")
    values = [v for per_class in cases.values() for v in per_class.values()]
    return {
        "cases": cases,
        "mean": float(np.mean(values)),
        "seconds_per_case": (time.perf_counter() - start) / len(cases),
    }


def run(args) -> dict:
    device = pick_device(args.device)
    built, rows = {}, []
    for name in args.data:
        try:
            built[name] = datasets.build(name, CACHE / "accuracy", args.seed)
        except FileNotFoundError as error:
            print(f"{name}: skipped ({error})")
    for dataset in built.values():
        for key in args.methods:
            row = run_method(key, dataset, args, device)
            if row:
                rows.append(row)
                print(_one_line(row), flush=True)
    return {
        "machine": describe_machine(device),
        "command": "python -m benchmarks.accuracy " + " ".join(args.argv),
        "minutes": args.minutes,
        "seed": args.seed,
        "datasets": {
            n: {"labels": d.labels, "protocol": d.protocol, "annotated_fraction": d.annotated_fraction, **d.facts}
            for n, d in built.items()
        },
        "rows": rows,
    }


def run_method(key: str, dataset: datasets.Dataset, args, device) -> dict | None:
    """One method on one dataset: trained and scored, or None when it cannot run there."""
    work = CACHE / "accuracy" / "runs" / f"{dataset.name}_{key}_seed{args.seed}"
    row = {"dataset": dataset.name, "method": key, "title": methods.TITLES[key]}
    if key in methods.TRAINED or key == "nnunet":
        row["minutes"] = args.minutes
    if key in methods.TRAINED:
        trained = methods.train(key, dataset, args.minutes, work, str(device))
        row["train_seconds"], row["steps"] = trained["seconds"], trained["stats"].get("step")
        row["curve"] = [
            {"minutes": s["minutes"], "mean": score(dataset, _segmenter(s["model"], dataset, device, False))["mean"]}
            for s in _spread(trained["snapshots"], args.curve_points)
        ]
        row["model_alone"] = score(dataset, _segmenter(trained["model"], dataset, device, False))
        row["ct_alone"] = score(
            dataset, lambda case: methods.segment_ct_alone(trained["model"], dataset, case, str(device))
        )
        if dataset.name in datasets.SERVED_ON_STROKED_CASE:  # what /infer answers there: its strokes honoured
            row["served"] = score(dataset, _segmenter(trained["model"], dataset, device, True))
    elif key == "nnunet":
        result = methods.nnunet(dataset, args.minutes, work, Path(args.nnunet_venv))
        if isinstance(result, str):
            print(f"{dataset.name}/{key}: skipped ({result})")
            return None
        predictions, row["facts"] = result
        row.update(nnunet_columns(row["facts"]["facts"]))
        row["model_alone"] = score(dataset, lambda case: predictions[case.case_id])
        # its prediction ran in nnU-Net's process: its time, not that of reading the answer
        row["model_alone"]["seconds_per_case"] = row["facts"]["facts"]["seconds_predict"]
    else:
        if dataset.name == "phantom":  # its scored cases have no strokes: nothing to propagate from
            return None
        propagation = methods.PROPAGATIONS[key]
        row["served"] = score(dataset, lambda case: propagation(dataset, case, str(device)))
    return row


def nnunet_columns(facts: dict) -> dict:
    """The peer's `train (s)` (planning and preprocessing included, as ours include data preparation) and
    `steps` (its iterations) from the facts benchmarks.nnunet_peer reports."""
    return {"train_seconds": round(facts["seconds_preprocess"] + facts["seconds_train"]), "steps": facts["iterations"]}


def merged(previous_file: Path, results: dict) -> dict:
    """This run's rows and datasets over those of an earlier run (rows replaced by dataset and method)."""
    if not previous_file.exists():
        return results
    previous = json.loads(previous_file.read_text())
    ran = {(r["dataset"], r["method"]) for r in results["rows"]}
    kept = [r for r in previous["rows"] if (r["dataset"], r["method"]) not in ran]
    commands = list(dict.fromkeys([*previous.get("commands", [previous["command"]]), results["command"]]))
    return {
        **results,
        "commands": commands,
        "datasets": {**previous["datasets"], **results["datasets"]},
        "rows": kept + results["rows"],
    }


def _segmenter(model: str, dataset, device, use_strokes: bool):
    return lambda case: methods.segment(model, dataset, case, str(device), use_strokes and bool(case.strokes))


def _spread(snapshots: list[dict], count: int) -> list[dict]:
    """At most `count` snapshots, evenly spread, the last one always in."""
    if len(snapshots) <= count:
        return snapshots
    picks = {round(i * (len(snapshots) - 1) / (count - 1)) for i in range(count)}
    return [s for i, s in enumerate(snapshots) if i in picks]


def _one_line(row: dict) -> str:
    parts = [f"{row['dataset']}/{row['method']}:"]
    for kind in ("served", "model_alone", "ct_alone"):
        if kind in row:
            parts.append(f"{kind} mean Dice {row[kind]['mean']:.3f}")
    if "train_seconds" in row:
        parts.append(f"trained {row['train_seconds']:.0f} s ({row['steps']} steps)")
    return " ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=",".join(datasets.DEFAULT_NAMES), help="datasets, comma-separated")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="methods, comma-separated")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of each trained method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve-points", type=int, default=6, help="published models scored per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--nnunet-venv", default=str(ROOT / ".venv-nnunet"))
    parser.add_argument("--smoke", action="store_true", help="phantom, CmFNet and the random walker, seconds")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--merge", action="store_true", help="keep the other rows of the last run's accuracy.json")
    parser.add_argument(
        "--out", type=Path, help="folder for accuracy.{json,md,png} instead of results/; README left alone"
    )
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.smoke:
        args.data, args.methods, args.minutes, args.curve_points = "phantom", "cmfnet", 0.3, 2
    args.data = [d for d in args.data.split(",") if d]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(methods.TITLES) | set(args.data) - set(datasets.NAMES)
    if unknown:
        parser.error(f"unknown {sorted(unknown)}; methods {sorted(methods.TITLES)}, data {list(datasets.NAMES)}")
    logging.basicConfig(level=logging.WARNING)
    results = run(args)
    if not results["rows"]:
        parser.exit(1, "accuracy: no method ran on any dataset (reasons above); results left as they were\n")
    folder = args.out or RESULTS
    if args.merge:
        results = merged(folder / "accuracy.json", results)
    markdown = accuracy_markdown(results)
    name = "accuracy_smoke" if args.smoke else "accuracy"
    write_results(name, results, markdown, folder)
    if not args.smoke:
        plot_curves(results, folder / "accuracy_curve.png")
        if not args.no_readme and args.out is None:
            write_between_markers(ROOT / "README.md", "accuracy", markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
