"""Annotation efficiency: a simulated annotator uses the server as a person in 3D Slicer does, round after round.

    python -m benchmarks.annotator                 # phantoms and the real scan: results/annotator.*, README
    python -m benchmarks.annotator --smoke         # tiny phantoms, one correction round, seconds of training

Round 0 draws a few strokes per structure on each annotated case; every later round strokes the
current result's largest errors within round 0's budget of strokes and voxels (benchmarks.strokes).
The strokes go to the server as Slicer's Scribbles section sends them (benchmarks.slicer); the
annotator then waits until the retraining they started has ended and asks for the result.

| arm | what answers, on the loop's strokes |
| --- | --- |
| `loop` | the server, retraining after each round (`auto_train`) |
| `no_retraining` | a server with the loop's model after round 0, never retrained (strokes honoured locally) |
| `ct_only` | the loop with `--conf modalities ct` |
| `dense` | the loop given whole axial slices of truth, about as many voxels as the strokes, instead |
| `propagation`, `random_walker`, `graphcut` | benchmarks.methods' propagation from the strokes (nothing learned) |

Scores (benchmarks.accuracy's Dice): the annotated cases over the voxels the arm was not given,
and the never-scribbled cases (phantoms only) over all voxels. Wall time is what the annotator
waited for: requests, retraining, results (server start and scoring left out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from benchmarks import methods
from benchmarks.accuracy import score
from benchmarks.common import CACHE, RESULTS, ROOT, describe_machine
from benchmarks.datasets import TEST_SEEDS, TRAIN_SEEDS, Case, Dataset
from benchmarks.report import annotator_markdown, plot_annotator
from benchmarks.server import running_server
from benchmarks.slicer import SlicerClient
from benchmarks.strokes import Budget, body_mask, dense_slices, error_strokes, first_strokes
from lib.markdown import write_between_markers
from lib.transforms.intensity import CT_AIR_HU

TITLES = {
    "loop": "CmFNet loop (retraining)",
    "no_retraining": "CmFNet, no retraining",
    "ct_only": "CmFNet loop, CT only",
    "dense": "CmFNet loop, dense slices",
    "propagation": "walker + appearance + CRF (no learning)",
    "random_walker": "random walker (no learning)",
    "graphcut": "MONAI Label graph cut (no learning)",
}
ARMS = tuple(TITLES)  # the loop first: its annotator places the strokes that the others replay
# a second run after a round's strokes could only be one queued during the first (strokes that came after it
# started), and the server starts that within a second of the first one's end
SETTLE_SECONDS = 2.0


@dataclass
class Data:
    dataset: Dataset  # every case, none with strokes
    annotated: list[Case]
    unseen: list[Case]  # never scribbled

    def truth(self, case: Case) -> np.ndarray:
        return np.asarray(nib.load(case.truth).dataobj)

    def affine(self, case: Case) -> np.ndarray:
        return nib.load(case.image).affine

    def body(self, case: Case) -> np.ndarray:
        return body_mask(np.asarray(nib.load(case.image).dataobj), CT_AIR_HU)


def build(name: str, folder: Path, smoke: bool, real_spacing: float | None) -> Data:
    """Phantoms (the accuracy benchmark's: its first training case annotated, its test cases never) or the real
    CT with its MR, as a datastore without strokes."""
    from lib.data.cases import write_case
    from lib.data.phantoms import make_case
    from lib.data.real_scans import REAL_LABELS, make_abdomen_case
    from lib.labels import DEMO_LABELS

    if name == "phantom":
        scale = 0.5 if smoke else 1.0
        annotated = {"train_0": make_case(TRAIN_SEEDS, scale)}
        unseen = {f"test_{i}": make_case(TEST_SEEDS + i, scale) for i in range(1 if smoke else 3)}
        labels, what = DEMO_LABELS, f"CT/MR phantoms (grid scale {scale:g})"
    else:
        annotated, unseen = {"abdomen": make_abdomen_case(0, real_spacing)}, {}
        labels, what = REAL_LABELS, f"real abdominal CT at {real_spacing or 3:g} mm with its simulated MR"
    cases = {}
    for case_id, case in {**annotated, **unseen}.items():
        paths = write_case(folder / "studies", case_id, case, truth_dir=folder / "truth")
        everywhere = folder / "scored" / f"{case_id}.nii.gz"
        everywhere.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ones(case.truth.shape, np.uint8), case.ct_affine), everywhere)
        cases[case_id] = Case(case_id, str(paths["image"]), str(paths["truth"]), None, str(everywhere))
    shape = "x".join(str(n) for n in next(iter(annotated.values())).ct.shape)
    protocol = f"{what}, CT {shape}; annotated: {', '.join(annotated)}; never scribbled: {', '.join(unseen) or '-'}"
    dataset = Dataset(name, dict(labels), folder / "studies", folder / "studies", list(cases.values()), protocol, 0.0)
    return Data(dataset, [cases[c] for c in annotated], [cases[c] for c in unseen])


def given_cases(data: Data, given: dict[str, np.ndarray], folder: Path) -> list[Case]:
    """The annotated cases with what an arm was given so far as their strokes, scored on their other voxels."""
    cases = []
    for case in data.annotated:
        paths = {kind: folder / kind / f"{case.case_id}.nii.gz" for kind in ("strokes", "scored")}
        for kind, values in (("strokes", given[case.case_id]), ("scored", given[case.case_id] == 0)):
            paths[kind].parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(values.astype(np.uint8), data.affine(case)), paths[kind])
        cases.append(replace(case, strokes=str(paths["strokes"]), scored=str(paths["scored"])))
    return cases


def scored(data: Data, cases: list[Case], results: dict[str, np.ndarray]) -> dict | None:
    return score(replace(data.dataset, cases=cases), lambda case: results[case.case_id]) if cases else None


class Annotator:
    """Places every round's strokes from the loop's results and keeps them, so the other arms replay them."""

    def __init__(self, data: Data, first_per_structure: int, seed: int):
        self.data, self.per_structure, self.seed = data, first_per_structure, seed
        self.rounds: list[dict[str, np.ndarray]] = []  # per round: {case: new strokes}
        self.budget: dict[str, Budget] = {}

    def __call__(self, r: int, results: dict[str, np.ndarray], given: dict[str, np.ndarray]) -> dict:
        if r < len(self.rounds):
            return self.rounds[r]
        k, new = len(self.data.dataset.labels), {}
        for case in self.data.annotated:
            truth, c = self.data.truth(case), case.case_id
            if r == 0:
                new[c] = first_strokes(truth, k, self.per_structure, self.data.body(case), self.seed)
                self.budget[c] = Budget(self.per_structure * (k + 1), int((new[c] > 0).sum()))
            else:
                new[c] = error_strokes(truth, results[c], given[c], k, self.budget[c], self.seed + r)
        self.rounds.append(new)
        return new


def dense_rounds(data: Data, annotator: Annotator):
    """Per round and case, new whole slices up to as many voxels as the strokes had by then."""
    k, dense = len(data.dataset.labels), {}
    for case in data.annotated:
        voxels = np.cumsum([int((new[case.case_id] > 0).sum()) for new in annotator.rounds])
        dense[case.case_id] = [dense_slices(data.truth(case), data.body(case), k, v) for v in voxels]
    return lambda r, *_: {c: np.where(d[r - 1] > 0, 0, d[r]) if r else d[0] for c, d in dense.items()}


def server_conf(data: Data, args, arm: str) -> dict[str, str]:
    """The servers' `--conf`: the run's settings, then `--conf` from the command line, then what makes the arm."""
    conf = {
        "labels": json.dumps(data.dataset.labels, separators=(",", ":")),
        "modalities": "ct,mr",
        "auto_train_delay": f"{args.train_delay:g}",
        "auto_train_minutes": f"{args.train_minutes:g}",
    }
    conf |= {"max_steps": str(args.max_steps), "val_every": str(args.max_steps // 2)} if args.max_steps else {}
    conf |= dict(args.conf)
    return (
        conf
        | {"auto_train": "false" if arm == "no_retraining" else "true"}
        | ({"modalities": "ct"} if arm == "ct_only" else {})
    )


def server_rounds(arm: str, data: Data, args, work: Path, plan, model: Path):
    """The rounds of a server arm; `plan(round, results, given)` gives each round's new labels. The loop leaves
    its model after round 0 in `model` (the no-retraining arm starts from it)."""
    folder = work / arm
    shutil.copytree(data.dataset.studies, folder / "studies")
    if arm == "no_retraining":
        (folder / "app" / "model").mkdir(parents=True)
        shutil.copy(model, folder / "app" / "model" / "cmfnet.pt")
    trains = arm != "no_retraining"
    with running_server(folder, folder / "studies", server_conf(data, args, arm)) as server:
        slicer = SlicerClient(server, data.dataset.labels, folder)
        given = {c.case_id: np.zeros(data.truth(c).shape, np.uint8) for c in data.annotated}
        results: dict[str, np.ndarray] = {}
        waited = 0.0
        for r in range(args.rounds + 1):
            start, runs = time.perf_counter(), len(server.train_runs())
            new_labels = {c: new for c, new in plan(r, results, given).items() if new.any()}
            for case in data.annotated:
                c = case.case_id
                if c not in new_labels:
                    continue
                new = new_labels[c]
                if arm == "dense":
                    slicer.save_label(c, new, data.affine(case))
                else:
                    slicer.scribbles(c, new, results.get(c), data.affine(case))
                given[c] = np.where(new > 0, new, given[c])
            new_runs = []
            if trains and new_labels:
                new_runs = server.wait_for_retraining(runs, SETTLE_SECONDS, 180 * args.train_minutes + 300)
            results = {c.case_id: slicer.segmentation(c.case_id) for c in data.annotated}
            waited += time.perf_counter() - start
            if arm == "loop" and r == 0:
                shutil.copy(server.model_file, model)
            stats = server.http.get("/info/").json().get("train_stats", {}).get("cmfnet", {})
            alone = {c.case_id: slicer.segmentation(c.case_id, use_strokes=False) for c in data.annotated}
            unseen = {c.case_id: slicer.segmentation(c.case_id) for c in data.unseen}
            cases = given_cases(data, given, folder / f"round_{r}")
            training = {"runs": len(new_runs), **{k: stats.get(k) for k in ("step", "best_step", "elapsed_seconds")}}
            yield row(arm, r, given, waited, scored(data, cases, results)) | {
                "model_alone": scored(data, cases, alone),
                "unseen": scored(data, data.unseen, unseen),
                "training": training,
            }


def propagation_rounds(arm: str, data: Data, work: Path, annotator: Annotator):
    """benchmarks.methods' propagation from the cumulative strokes of each round (nothing learned)."""
    given = {c.case_id: np.zeros(data.truth(c).shape, np.uint8) for c in data.annotated}
    waited = 0.0
    for r, new in enumerate(annotator.rounds):
        given = {c: np.where(new[c] > 0, new[c], g) for c, g in given.items()}
        cases = given_cases(data, given, work / arm / f"round_{r}")
        start = time.perf_counter()
        results = {case.case_id: methods.PROPAGATIONS[arm](data.dataset, case, "cpu") for case in cases}
        waited += time.perf_counter() - start
        yield row(arm, r, given, waited, scored(data, cases, results))


def row(arm: str, r: int, given: dict[str, np.ndarray], waited: float, annotated: dict) -> dict:
    return {
        "arm": arm,
        "title": TITLES[arm],
        "round": r,
        "labelled_voxels": int(sum((g > 0).sum() for g in given.values())),
        "wall_seconds": round(waited, 1),
        "annotated": annotated,
    }


def run(data: Data, args, work: Path) -> tuple[list[dict], dict]:
    """Every arm on `data`, the loop first (its annotator places the strokes that the others replay)."""
    annotator = Annotator(data, args.first_strokes, args.seed)
    model, rows = work / "loop_round_0.pt", []
    for arm in args.arms:
        try:
            if arm in methods.PROPAGATIONS:
                rounds = propagation_rounds(arm, data, work, annotator)
            else:
                plan = dense_rounds(data, annotator) if arm == "dense" else annotator
                rounds = server_rounds(arm, data, args, work, plan, model)
            for item in rounds:
                rows.append(item)
                brief = {k: v for k, v in item.items() if k not in ("annotated", "model_alone", "unseen")}
                print(json.dumps(brief | {"dice": item["annotated"]["mean"]}), flush=True)
        except Exception as error:  # an arm that fails is reported; the others still run
            rows.append({"arm": arm, "title": TITLES[arm], "error": f"{type(error).__name__}: {error}"})
            print(json.dumps(rows[-1]), flush=True)
    save_round_strokes(data, annotator, args.strokes_out / data.dataset.name)
    return rows, {c: vars(b) for c, b in annotator.budget.items()}


def save_round_strokes(data: Data, annotator: Annotator, folder: Path) -> None:
    """Every round's strokes so far, per annotated case (`<case>_round_<r>.nii.gz`, stored convention), so
    that a round's answer can be looked into after the run: the loop's strokes depend on its trained models
    and are not drawn the same way twice."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in data.annotated:
        given = np.zeros(data.truth(case).shape, np.uint8)
        for r, new in enumerate(annotator.rounds):
            given = np.where(new[case.case_id] > 0, new[case.case_id], given)
            nib.save(nib.Nifti1Image(given, data.affine(case)), folder / f"{case.case_id}_round_{r}.nii.gz")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="phantom,real", help="phantom and/or real, comma-separated")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of {','.join(ARMS)}, comma-separated (loop needed)")
    parser.add_argument("--rounds", type=int, default=2, help="correction rounds after round 0")
    parser.add_argument("--first-strokes", type=int, default=3, help="round 0: strokes per structure and case")
    parser.add_argument("--train-minutes", type=float, default=1.5, help="auto_train_minutes of the servers")
    parser.add_argument("--train-delay", type=float, default=3.0, help="auto_train_delay of the servers (s)")
    parser.add_argument("--max-steps", type=int, help="max_steps of a training run (default: the server's)")
    parser.add_argument("--real-spacing", type=float, help="resample the real CT to this spacing in mm (native 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--conf",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a server setting for every arm, as `monailabel start_server --conf` takes it (repeatable)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny phantoms, one correction round, a few steps")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of annotator.{md,json,png}")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README with annotator markers")
    parser.add_argument("--no-readme", action="store_true", help="leave the README as it is")
    parser.add_argument(
        "--strokes-out", type=Path, default=CACHE / "annotator", help="folder of every round's strokes, per data set"
    )
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.annotator", *(argv if argv is not None else sys.argv[1:])])
    if args.smoke:
        args.data, args.rounds, args.first_strokes = "phantom", 1, 2
        args.train_minutes, args.train_delay, args.max_steps = 0.5, 0.0, args.max_steps or 4
    args.arms = [a for a in ARMS if a in args.arms.split(",")]  # in ARMS' order: the loop first
    names = [n for n in args.data.split(",") if n]
    if "loop" not in args.arms or set(names) - {"phantom", "real"}:
        parser.error("--arms needs the loop (it places every arm's strokes); --data: phantom and/or real")
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    settings = {k: getattr(args, k) for k in ("rounds", "first_strokes", "train_minutes", "max_steps")}
    results = {"command": command, "machine": describe_machine(torch.device("cpu")), "settings": settings}
    results["datasets"] = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"cmfnet-annotator-{name}-") as folder:
            try:
                data = build(name, Path(folder) / "data", args.smoke, args.real_spacing)
            except FileNotFoundError as error:  # the real scan is not there
                print(f"{name}: skipped ({error})")
                continue
            rows, budget = run(data, args, Path(folder))
        results["datasets"][name] = {"protocol": data.dataset.protocol, "labels": data.dataset.labels}
        results["datasets"][name] |= {"budget": budget, "rows": rows}
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    results["load_average"] = round(os.getloadavg()[0], 2)

    stem = "annotator_smoke" if args.smoke else "annotator"
    markdown = annotator_markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"{stem}.md").write_text(markdown)
    plot_annotator(results, args.out / f"{stem}.png")
    if not (args.smoke or args.no_readme):
        image = f"![annotator]({os.path.relpath(args.out / f'{stem}.png', args.readme.parent)})"
        write_between_markers(args.readme, "annotator", f"{markdown}\n{image}")
    print(markdown)
    return results


if __name__ == "__main__":
    main()
