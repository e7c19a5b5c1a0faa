"""A simulated annotator that uses the server as a person in 3D Slicer does, round after round.

    python -m benchmarks.annotator --data real --rounds 3        # the report (both data sets: --data both)
    python -m benchmarks.annotator --smoke                        # the same end to end in a minute or two

**The annotator.** Round 0 draws `--first-strokes` strokes per structure (every class and the
background inside the body) on each annotated case, on axial slices spread evenly over the
structure, each a partial skeleton of the structure on that slice (lib.data.scribbles). Every
later round looks at the current result of each annotated case and strokes where it is most
wrong: the connected components of voxels whose true label is v and that the result labels
otherwise (a false negative of v, and a false positive of what it was labelled), largest first,
each on its axial slice of largest cross-section (the slice a person scrolling through would
stop on), the stroke taking the true label (`background` for v = 0). A round may use as many
strokes and voxels per case as round 0 drew (`--strokes`, `--voxels` change that); a component
gets a second stroke, on another slice, only when every larger one has one.

**Over REST, as Slicer sends it.** The round's strokes of a case go in one scribbles request
(`POST /infer/cmfnet_scribbles`): a labelmap on the CT grid with Slicer's segments in its order
(the result's class segments, `background_scribbles`, `foreground_scribbles` for the selected
class, `<class>_scribbles` segments for the other classes, which a Slicer user adds by name),
positional ids in `label_info`, and `selected_label_name`. Then the annotator waits, as a user
watching the training status would, until the retraining that the strokes started has ended,
and asks for the corrected result (`POST /infer/cmfnet`, strokes honoured). Cases never
scribbled are inferred for scoring.

**Arms, on the same strokes** (the loop's annotator places them; the others replay them):

| arm | what answers |
| --- | --- |
| `loop` | the server, retraining after each round (auto_train) |
| `no_retraining` | a server with the loop's model after round 0, never retrained (strokes corrected locally) |
| `ct_only` | the loop with `--conf modalities ct` |
| `dense` | the loop given dense labels (whole axial slices, in the body) of about as many voxels instead of strokes |
| `random_walker` | lib.scribbles.propagation, as the scribbles task answers before any model (learns nothing) |
| `graph_cut` | MONAI Label's HistogramBasedGraphCut from the strokes (benchmarks.graphcut; learns nothing) |

**Scores.** Dice (MONAI DiceMetric) per class on the annotated cases over the voxels the arm was
not given (strokes, or dense slices), and on the never-scribbled cases over all voxels; wall time
is what the annotator waited for (requests, retraining, the corrected result; server start and
scoring excluded). Outputs: results/annotator_<data>.{json,md,png}, and the tables in README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks import one_hot
from scipy.ndimage import binary_fill_holes, find_objects
from scipy.ndimage import label as components

from benchmarks.common import RESULTS, ROOT, write_between_markers
from lib.data.scribbles import ScribbleSettings, stroke_in_slice

AXIS = 2  # axial slices: where people draw
STROKE = ScribbleSettings(erosion=2, keep=0.5, min_length=5)
MIN_ERROR_VOXELS = 10  # smaller error components are not worth a stroke
ARMS = ("loop", "no_retraining", "ct_only", "dense", "random_walker", "graph_cut")
TITLES = {
    "loop": "CmFNet loop (retraining)",
    "no_retraining": "CmFNet, no retraining",
    "ct_only": "CT-only loop",
    "dense": "dense slices, same voxels",
    "random_walker": "random walker",
    "graph_cut": "graph cut (MONAI Label)",
}


# ---- where the annotator draws ------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    strokes: int
    voxels: int


def body_mask(ct: np.ndarray, threshold: float) -> np.ndarray:
    """Inside the body: above `threshold` HU, holes filled slice by slice."""
    return np.stack([binary_fill_holes(s) for s in np.moveaxis(ct > threshold, AXIS, 0)], axis=AXIS)


def first_strokes(truth: np.ndarray, num_classes: int, per_structure: int, body: np.ndarray, seed: int) -> np.ndarray:
    """Round 0 (stored convention): `per_structure` strokes of every class and of the background in the body,
    on axial slices spread evenly over the structure's extent."""
    rng = np.random.default_rng(seed)
    strokes = np.zeros(truth.shape, np.uint8)
    structures = [(c, truth == c) for c in range(1, num_classes + 1)] + [(num_classes + 1, (truth == 0) & body)]
    for value, region in structures:
        slices = np.flatnonzero(region.any(axis=(0, 1)))
        if len(slices) == 0:
            continue
        picks = np.unique(slices[((np.arange(per_structure) + 0.5) / per_structure * len(slices)).astype(int)])
        for z in picks:
            stroke = stroke_in_slice(region[..., z], STROKE, rng) & (strokes[..., z] == 0)
            strokes[..., z][stroke] = value
    return strokes


def error_strokes(
    truth: np.ndarray, result: np.ndarray, labelled: np.ndarray, num_classes: int, budget: Budget, seed: int
) -> np.ndarray:
    """New strokes (stored convention) where `result` is most wrong, within `budget`, off labelled voxels."""
    rng = np.random.default_rng(seed)
    errors = []  # (size, value, component mask cropped, its box)
    for v in range(num_classes + 1):
        ids, _ = components((truth == v) & (result != v) & (labelled == 0))
        sizes = np.bincount(ids.ravel())
        for index, box in enumerate(find_objects(ids), start=1):
            if box is not None and sizes[index] >= MIN_ERROR_VOXELS:
                errors.append((sizes[index], num_classes + 1 if v == 0 else v, ids[box] == index, box))
    errors.sort(key=lambda e: -e[0])
    new = np.zeros(truth.shape, np.uint8)
    used: list[list[int]] = [[] for _ in errors]
    drawn, voxels_left = 0, budget.voxels
    longest = max(1, 2 * budget.voxels // max(budget.strokes, 1))  # no single stroke takes the whole round
    for _ in range(3):  # a second or third stroke on a component only after every larger one has one
        for i, (_, value, mask, box) in enumerate(errors):
            if drawn >= budget.strokes or voxels_left <= 0:
                return new
            area = mask.sum(axis=(0, 1)).astype(float)
            for z in used[i]:  # another slice than the ones already stroked, at least 2 apart
                area[max(z - 1, 0) : z + 2] = 0
            if area.max() < 3:
                continue
            z = int(area.argmax())
            slab = new[box][..., z]
            stroke = stroke_in_slice(mask[..., z] & (slab == 0), STROKE, rng)
            pixels = np.argwhere(stroke)
            if len(pixels) == 0:
                continue
            middle = pixels[np.argmin(np.linalg.norm(pixels - pixels.mean(axis=0), axis=1))]
            pixels = pixels[np.argsort(np.linalg.norm(pixels - middle, axis=1), kind="stable")]
            pixels = pixels[: min(voxels_left, longest)]
            slab[tuple(pixels.T)] = value
            used[i].append(z)
            drawn += 1
            voxels_left -= len(pixels)
    return new


def dense_slices(truth: np.ndarray, body: np.ndarray, num_classes: int, voxels: int) -> np.ndarray:
    """Dense labels of whole axial slices (truth in the body, background K+1), about `voxels` of them, at least
    one slice; slices in bisection order over the body (middle, quarters, ...), so more voxels add slices."""
    slices = np.flatnonzero(body.any(axis=(0, 1)))
    count = int(min(len(slices), max(1, round(voxels * len(slices) / body[..., slices].sum()))))
    order, level = [], 0
    while len(order) < count:
        for k in range(2**level):
            z = int(slices[int((2 * k + 1) / 2 ** (level + 1) * len(slices))])
            if z not in order:
                order.append(z)
        level += 1
    order = order[:count]
    label = np.zeros(truth.shape, np.uint8)
    label[..., order] = np.where(truth[..., order] > 0, truth[..., order], num_classes + 1)
    label[~body] = 0
    return label


def slicer_request(
    new: np.ndarray, result: np.ndarray | None, labels: dict[str, int]
) -> tuple[np.ndarray, list[dict], str]:
    """(labelmap, label_info, selected_label_name) of one Update in Slicer's Scribbles section: the result's
    class segments, `background_scribbles`, `foreground_scribbles` (the class with most new voxels), then a
    `<class>_scribbles` segment per other class with strokes; ids positional, later segments drawn over earlier."""
    names = {v: k for k, v in labels.items()}
    background = len(labels) + 1
    counts = {c: int((new == c).sum()) for c in labels.values()}
    selected = max(counts, key=lambda c: (counts[c], -c))
    segments = [(name, result == c) for name, c in labels.items()] if result is not None else []
    segments += [("background_scribbles", new == background), ("foreground_scribbles", new == selected)]
    segments += [(f"{names[c]}_scribbles", new == c) for c in labels.values() if c != selected and counts[c]]
    labelmap = np.zeros(new.shape, np.uint8)
    for index, (_, mask) in enumerate(segments, start=1):
        labelmap[mask] = index
    return labelmap, [{"name": name, "id": i} for i, (name, _) in enumerate(segments, start=1)], names[selected]


# ---- scoring ------------------------------------------------------------------------------------


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, given: np.ndarray | None, num_classes: int) -> list:
    """MONAI DiceMetric per class over the voxels not `given` to the method (NaN where the class is absent)."""
    free = torch.ones(truth.shape) if given is None else torch.as_tensor(given == 0).float()
    y_pred = one_hot(torch.as_tensor(prediction.astype(np.int64))[None, None], num_classes + 1) * free
    y = one_hot(torch.as_tensor(truth.astype(np.int64))[None, None], num_classes + 1) * free
    scores = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(y_pred, y)[0]
    return [None if math.isnan(s) else round(float(s), 4) for s in scores.tolist()]


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


# ---- data ---------------------------------------------------------------------------------------


@dataclass
class Data:
    name: str
    studies: Path
    labels: dict[str, int]
    truth: dict[str, np.ndarray]
    body: dict[str, np.ndarray]
    affine: dict[str, np.ndarray]
    annotated: list[str]
    unseen: list[str]
    description: str


def make_data(name: str, folder: Path, cases: int, smoke: bool, real_spacing: float | None) -> Data:
    """Phantoms (lib.data.phantoms: the first case annotated, the others never) or the real CT with its MR."""
    from lib.data.cases import write_case
    from lib.data.phantoms import DEMO_LABELS, make_case
    from lib.data.real_scans import CT_BODY_HU, REAL_LABELS, make_abdomen_case, missing_reason

    studies = folder / "studies"
    if name == "phantom":
        grid = 0.5 if smoke else 1.0
        written = {f"case_{i:03d}": make_case(i, grid) for i in range(cases)}
        labels, what = dict(DEMO_LABELS), f"CT/MR phantoms (lib.data.phantoms, grid scale {grid:g})"
    else:
        if missing_reason():
            raise FileNotFoundError(missing_reason())
        written = {"abdomen": make_abdomen_case(0, real_spacing)}
        spacing = f"{real_spacing:g} mm" if real_spacing else "native 3 mm"
        labels, what = dict(REAL_LABELS), f"real abdominal CT ({spacing}) with its simulated MR (lib.data.real_scans)"
    for case_id, case in written.items():
        write_case(studies, case_id, case, truth_dir=folder / "truth")
    ids = list(written)
    shape = "x".join(str(n) for n in next(iter(written.values())).ct.shape)
    return Data(
        name=name,
        studies=studies,
        labels=labels,
        truth={i: c.truth for i, c in written.items()},
        body={i: body_mask(c.ct, CT_BODY_HU) for i, c in written.items()},
        affine={i: c.ct_affine for i, c in written.items()},
        annotated=ids[:1],
        unseen=ids[1:],
        description=f"{what}, CT {shape}; annotated: {ids[0]}; never scribbled: {', '.join(ids[1:]) or 'none'}",
    )


# ---- arms ---------------------------------------------------------------------------------------


class Rest:
    """The calls 3D Slicer's MONAI Label module makes, through monailabel's own client."""

    def __init__(self, server, data: Data, folder: Path, delay: float):
        from monailabel.client import MONAILabelClient

        self.server, self.data, self.folder, self.delay = server, data, folder, delay
        self.client = MONAILabelClient(server.url, tmpdir=str(folder))

    def scribbles(self, case: str, new: np.ndarray, result: np.ndarray | None) -> None:
        from monailabel.transform.writer import write_itk

        labelmap, label_info, selected = slicer_request(new, result, self.data.labels)
        path = str(self.folder / f"scribbles_{case}.nrrd")
        write_itk(labelmap, path, self.data.affine[case], np.uint8, compress=True)
        params = {"label_info": label_info, "selected_label_name": selected, "roi": []}
        answer, _ = self.client.infer("cmfnet_scribbles", case, {**params, **SLICER_RESULT}, label_in=path)
        os.unlink(answer)

    def save_labels(self, case: str, labels: np.ndarray) -> None:
        path = self.folder / f"labels_{case}.nii.gz"
        nib.save(nib.Nifti1Image(labels, self.data.affine[case]), path)
        self.client.save_label(case, str(path), tag="scribbles")

    def runs(self) -> list[dict]:
        response = self.server.http.get("/train/", params={"all": True})
        return response.json() if response.status_code == 200 else []

    def wait_for_training(self, runs_before: int, timeout: float) -> None:
        """Until the retraining that the strokes started has ended and no queued run follows."""
        deadline, quiet_since = time.monotonic() + timeout, None
        while True:
            runs = self.runs()
            idle = len(runs) > runs_before and not any(r["status"] in ("SUBMITTED", "RUNNING") for r in runs)
            quiet_since = (quiet_since or time.monotonic()) if idle else None
            if quiet_since and time.monotonic() - quiet_since > self.delay + 2:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no retraining ended within {timeout:.0f} s: {runs[runs_before:]}")
            time.sleep(1)

    def training(self, runs_before: int) -> dict:
        """What the round's retraining did: runs, and the last run's steps and best (step 0: nothing published)."""
        stats = self.server.http.get("/info/").json().get("train_stats", {}).get("cmfnet", {})
        keys = ("step", "best_step", "best_metric", "elapsed_seconds")
        return {"runs": len(self.runs()) - runs_before, **{key: stats.get(key) for key in keys}}

    def result(self, case: str, use_strokes: bool = True) -> np.ndarray:
        answer, _ = self.client.infer("cmfnet", case, {**SLICER_RESULT, "use_strokes": use_strokes})
        labels = np.asarray(read_image(answer)).astype(np.uint8)
        os.unlink(answer)
        return labels


@functools.cache
def _reader():
    from monai.transforms import LoadImage

    return LoadImage(image_only=True)


def read_image(path: str):
    return _reader()(path)


SLICER_RESULT = {"result_extension": ".nrrd", "result_dtype": "uint8"}  # what Slicer asks for


@contextlib.contextmanager
def served(data: Data, folder: Path, conf: dict, model: Path | None = None):
    """`monailabel start_server` on a copy of the datastore (and `model` published at start)."""
    from tests.conftest import running_server

    shutil.copytree(data.studies, folder / "studies")
    if model is not None:
        (folder / "app" / "model").mkdir(parents=True)
        shutil.copy(model, folder / "app" / "model" / "cmfnet.pt")
    with running_server(folder, folder / "studies", conf) as server:
        yield Rest(server, data, folder, float(conf["auto_train_delay"]))


def server_conf(data: Data, args, arm: str) -> dict:
    conf = {
        "labels": json.dumps(data.labels, separators=(",", ":")),
        "modalities": "ct" if arm == "ct_only" else "ct,mr",
        "auto_train": "false" if arm == "no_retraining" else "true",
        "auto_train_delay": f"{args.train_delay:g}",
        "auto_train_minutes": f"{args.train_minutes:g}",
    }
    return conf | ({"max_steps": str(args.max_steps), "val_every": str(args.max_steps // 2)} if args.max_steps else {})


def run_server_arm(arm: str, data: Data, args, folder: Path, plan, model: Path | None = None, keep_model=None):
    """Rounds of one server arm: `plan(round, results, given)` -> {case: new labels}; yields score rows."""
    trains = arm != "no_retraining"
    timeout = 3 * 60 * args.train_minutes + 300
    with served(data, folder, server_conf(data, args, arm), model) as rest:
        given = {c: np.zeros(data.truth[c].shape, np.uint8) for c in data.annotated}
        results: dict[str, np.ndarray] = {}
        waited = 0.0
        for r in range(args.rounds + 1):
            new = {case: labels for case, labels in plan(r, results, given).items() if labels.any()}
            start, runs = time.perf_counter(), len(rest.runs())
            for case, labels in new.items():
                rest.save_labels(case, labels) if arm == "dense" else rest.scribbles(case, labels, results.get(case))
                given[case] = np.where(labels > 0, labels, given[case])
            if trains and new:
                rest.wait_for_training(runs, timeout)
            results = {case: rest.result(case) for case in data.annotated}
            waited += time.perf_counter() - start
            training = rest.training(runs) if trains and new else {"runs": 0}
            if keep_model and r == 0:
                keep_model(rest.server.model_file)
            alone = {case: rest.result(case, use_strokes=False) for case in data.annotated}
            unseen = {case: rest.result(case) for case in data.unseen}
            yield score(data, arm, r, results, given, unseen, waited, alone) | {"training": training}


def propagation_rounds(arm: str, data: Data, args, strokes: list[dict]):
    """The random walker or graph cut from the cumulative strokes of each round (no server, nothing learned)."""
    given = {c: np.zeros(data.truth[c].shape, np.uint8) for c in data.annotated}
    waited = 0.0
    for r, new in enumerate(strokes):
        start = time.perf_counter()
        results = {}
        for case, labels in new.items():
            given[case] = np.where(labels > 0, labels, given[case])
            results[case] = propagate(arm, data, case, given[case], args.smoke)
        waited += time.perf_counter() - start
        yield score(data, arm, r, results, given, {}, waited)


def propagate(arm: str, data: Data, case: str, strokes: np.ndarray, smoke: bool) -> np.ndarray:
    from lib.planning import make_plan
    from lib.scribbles.propagation import keep_strokes, stroke_probabilities
    from lib.transforms.grid import restore_labels, voxel_spacing
    from lib.transforms.modalities import LoadModalitiesd

    path, k = str(data.studies / f"{case}.nii.gz"), len(data.labels)
    spacing = voxel_spacing(data.affine[case])
    if arm == "graph_cut":
        from benchmarks.graphcut import graphcut

        return graphcut(path, strokes, data.affine[case], k, pix_dim=spacing if smoke else None)
    # as the scribbles task answers before any model exists: its own plan's grid, CT and MR
    plan = make_plan([spacing], [strokes.shape], 2, 2)
    loaded = LoadModalitiesd(["ct", "mr"], spacing=plan.spacing)({"image": path})
    probabilities = stroke_probabilities(loaded["image"], strokes, k, "ct")
    return keep_strokes(restore_labels(probabilities, loaded["reference_shape"]), strokes, k)


def score(data: Data, arm, r, results, given, unseen, waited, alone=None) -> dict:
    k = len(data.labels)
    row = {"arm": arm, "round": r, "wall_seconds": round(waited, 1), "load": round(os.getloadavg()[0], 2)}
    row["labelled_voxels"] = int(sum((g > 0).sum() for g in given.values()))
    row["annotated"] = {c: dice_per_class(results[c], data.truth[c], given[c], k) for c in results}
    row["unseen"] = {c: dice_per_class(p, data.truth[c], None, k) for c, p in unseen.items()}
    row["model_alone"] = {c: dice_per_class(p, data.truth[c], given[c], k) for c, p in (alone or {}).items()}
    for part in ("annotated", "unseen", "model_alone"):
        row[f"{part}_dice"] = mean(mean(d) for d in row[part].values()) if row[part] else None
    return row


# ---- the run ------------------------------------------------------------------------------------


def run(data: Data, args, work: Path) -> list[dict]:
    """Every arm on `data`; the loop first, since its annotator places the strokes the others replay."""
    k = len(data.labels)
    strokes: list[dict] = []  # per round: {case: new strokes}
    budget: dict[str, Budget] = {}

    def annotator(r, results, given):
        if r < len(strokes):
            return strokes[r]
        if r == 0:
            new = {c: first_strokes(data.truth[c], k, args.first_strokes, data.body[c], args.seed) for c in given}
            for c, s in new.items():
                drawn = args.first_strokes * (k + 1) if args.strokes is None else args.strokes
                budget[c] = Budget(drawn, int((s > 0).sum()) if args.voxels is None else args.voxels)
        else:
            new = {c: error_strokes(data.truth[c], results[c], given[c], k, budget[c], args.seed + r) for c in given}
        strokes.append(new)
        return new

    first_model = work / "first_model.pt"
    rows: list[dict] = []
    for arm in [a for a in ARMS if a in args.arms]:
        try:
            if arm in ("random_walker", "graph_cut"):
                rows += report(propagation_rounds(arm, data, args, strokes))
                continue
            if arm == "no_retraining" and not first_model.exists():
                raise RuntimeError("the loop published no model after round 0")
            plan = annotator
            if arm == "dense":
                plan = dense_plan(data, strokes)
            keep = (lambda path: path.exists() and shutil.copy(path, first_model)) if arm == "loop" else None
            model = first_model if arm == "no_retraining" else None
            rows += report(run_server_arm(arm, data, args, work / arm, plan, model, keep))
        except Exception as error:  # an arm that fails is reported, the others still run
            rows.append({"arm": arm, "error": f"{type(error).__name__}: {error}"})
            print(json.dumps(rows[-1]), flush=True)
    args.budget = {c: vars(b) for c, b in budget.items()}
    return rows


def report(rounds) -> list[dict]:
    """The rows of an arm's rounds, each printed (without per-case details) as it comes."""
    rows = []
    for row in rounds:
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("annotated", "unseen", "model_alone")}), flush=True)
    return rows


def dense_plan(data: Data, strokes: list[dict]):
    """Rounds of the dense arm: per case, new whole slices up to as many voxels as the strokes had by then."""
    k = len(data.labels)
    dense = {}
    for c in data.annotated:
        voxels = np.cumsum([int((new[c] > 0).sum()) for new in strokes])
        dense[c] = [dense_slices(data.truth[c], data.body[c], k, v) for v in voxels]

    def plan(r, *_):
        return {c: np.where(d[r - 1] > 0, 0, d[r]) if r else d[0] for c, d in dense.items()}

    return plan


# ---- report -------------------------------------------------------------------------------------


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(data: Data, rows: list[dict], context: dict) -> str:
    names = ", ".join(data.labels)
    lines = [
        f"Command: `{context['command']}` on {context['machine']}, load average {context['load_start']} at the start, "
        f"{context['load_end']} at the end; {context['minutes']:.1f} min. {data.description}. Budget of a "
        f"correction round: {context['budget']}. Retraining: `auto_train_minutes` {context['train_minutes']:g}"
        f"{', max_steps ' + str(context['max_steps']) if context['max_steps'] else ''}.",
        "",
        "| arm | round | labelled voxels | wait (s) | Dice, annotated case (unlabelled voxels) "
        "| Dice, model alone | Dice, never-scribbled cases |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {TITLES[row['arm']]} | failed: {row['error'][:120]} | | | | | |")
            continue
        lines.append(
            f"| {TITLES[row['arm']]} | {row['round']} | {row['labelled_voxels']} | {row['wall_seconds']:.0f} "
            f"| {_cell(row['annotated_dice'])} | {_cell(row['model_alone_dice'])} | {_cell(row['unseen_dice'])} |"
        )
    last = [r for r in rows if "error" not in r and r["round"] == max(x.get("round", 0) for x in rows)]
    lines += ["", f"Last round, Dice per class on the annotated case ({names}):", ""]
    lines += ["| arm | " + " | ".join(data.labels) + " |", "|---|" + "---|" * len(data.labels)]
    for row in last:
        per_class = np.array([[np.nan if v is None else v for v in d] for d in row["annotated"].values()]).mean(0)
        lines.append(
            f"| {TITLES[row['arm']]} | " + " | ".join(_cell(None if np.isnan(v) else v) for v in per_class) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(data: Data, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for index, arm in enumerate(ARMS):
        mine = [r for r in rows if r["arm"] == arm and "error" not in r]
        if not mine:
            continue
        colour = f"C{index}"
        for axis, x in zip(axes, ("round", "labelled_voxels", "wall_seconds"), strict=True):
            axis.plot([r[x] for r in mine], [r["annotated_dice"] for r in mine], "o-", color=colour, label=TITLES[arm])
            unseen = [(r[x], r["unseen_dice"]) for r in mine if r["unseen_dice"] is not None]
            if unseen:
                axis.plot(*zip(*unseen, strict=True), "s--", color=colour, alpha=0.7)
    for axis, title in zip(axes, ("round", "labelled voxels (cumulative)", "wait (s, cumulative)"), strict=True):
        axis.set_xlabel(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice (solid: annotated case; dashed: never scribbled)")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Simulated annotator, {data.name}: {data.description}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("phantom", "real", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3, help="correction rounds after round 0")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {','.join(ARMS)} (loop needed)")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases: the first annotated, the rest never")
    parser.add_argument("--real-spacing", type=float, help="resample the real CT to this spacing in mm (native 3)")
    parser.add_argument("--first-strokes", type=int, default=3, help="round 0: strokes per structure")
    parser.add_argument("--strokes", type=int, help="strokes per round and case (default: round 0's)")
    parser.add_argument("--voxels", type=int, help="stroke voxels per round and case (default: round 0's)")
    parser.add_argument("--train-minutes", type=float, default=3.0, help="auto_train_minutes of the servers")
    parser.add_argument("--train-delay", type=float, default=5.0, help="auto_train_delay of the servers (s)")
    parser.add_argument("--max-steps", type=int, help="max_steps of a training run (default: the server's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny phantoms, 1 round, seconds of training")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data, args.cases, args.rounds, args.first_strokes = "phantom", 2, 1, 2
        args.train_minutes, args.train_delay, args.max_steps = 0.25, 1.0, args.max_steps or 6
    args.arms = [a.strip() for a in args.arms.split(",")]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown or "loop" not in args.arms:
        parser.error(f"--arms: unknown {unknown} or no loop (its annotator places every arm's strokes)")

    from benchmarks.common import describe_machine

    summary = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("phantom", "real") if args.data == "both" else (args.data,):
        started, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
        with tempfile.TemporaryDirectory(prefix=f"cmfnet-annotator-{name}-") as folder:
            data = make_data(name, Path(folder) / "data", args.cases, args.smoke, args.real_spacing)
            rows = run(data, args, Path(folder))
        context = {
            "command": "python -m benchmarks.annotator " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": describe_machine(torch.device("cpu")),
            "load_start": load_start,
            "load_end": round(os.getloadavg()[0], 2),
            "minutes": (time.perf_counter() - started) / 60,
            "budget": "; ".join(f"{c}: {b['strokes']} strokes, {b['voxels']} voxels" for c, b in args.budget.items()),
            "train_minutes": args.train_minutes,
            "max_steps": args.max_steps,
        }
        table = markdown(data, rows, context)
        (args.out / f"annotator_{name}.md").write_text(table)
        (args.out / f"annotator_{name}.json").write_text(json.dumps({"context": context, "rows": rows}, indent=1))
        plot(data, rows, args.out / f"annotator_{name}.png")
        if not args.no_readme:
            image = f"![annotator_{name}](results/annotator_{name}.png)"
            write_between_markers(args.readme, f"annotator-{name}", f"{table}\n{image}")
        summary[name] = rows
    return summary


if __name__ == "__main__":
    main()
