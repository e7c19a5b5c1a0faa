"""The compared methods. Every trained method is a train request to the product's own train task
(lib.trainers.cmfnet, in this process: the code path `POST /train/cmfnet` runs in its subprocess) and is
scored through the product's own infer task; only the request differs.

| key | what |
| --- | --- |
| `cmfnet` | the default run: CmFNet, pseudo labels from the refined propagation, the default loss (no regularizers) |
| `walker_pseudo` | the same, pseudo labels from the random walker alone (`propagation: random_walker`) |
| `regularized` | the same with the paper's regularizers on (affinity, consistency, alignment) |
| `self_training` | the same, pseudo labels half the walker's, half its own fused and per-modality outputs (DMSPS) |
| `confident_pseudo` | the same, pseudo labels less sure than 0.6 left out (`loss.pseudo_min_confidence`) |
| `no_propagation` | the same, from the strokes alone (no pseudo labels) |
| `pce` | the same network with partial cross-entropy on the strokes only |
| `full_branches` | the same, each per-modality output weighted 1 (`loss.branches`; the default before) |
| `early_fusion` | one MONAI UNet with CT and MR as channels, the same recipe (`network: unet`) |
| `dense` | CmFNet on the dense truth of the same cases (`final` labels): the upper bound |
| `propagation` | our propagation from the same strokes, no learning (walker + appearance + CRF, the scribbles answer) |
| `random_walker` | the random walker alone from the same strokes, no learning |
| `graphcut` | MONAI Label's Histogram+GraphCut from the same strokes, no learning, one class at a time |
| `nnunet` | nnU-Net v2 with its `ignore` label, in its own venv (benchmarks/nnunet_peer.py) |
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import distance_transform_edt

from benchmarks.common import ROOT
from benchmarks.datasets import Case, Dataset
from lib.datastore import CmfnetDatastore
from lib.infers.cmfnet import CmFNetSegmentation
from lib.labels import LabelSet
from lib.planning import make_plan
from lib.scribbles.propagation import keep_strokes, stroke_probabilities
from lib.settings import TrainSettings
from lib.trainers.cmfnet import CmFNetTrainer
from lib.transforms.grid import restore_labels, voxel_spacing
from lib.transforms.modalities import LoadModalitiesd, load_volume

MODALITIES = ["ct", "mr"]
OFF = {"affinity": 0.0, "consistency": 0.0, "alignment": 0.0, "pseudo": 0.0}
TRAINED: dict[str, tuple[str, dict]] = {
    "cmfnet": ("CmFNet (default run)", {}),
    "confident_pseudo": (
        "CmFNet, pseudo labels from confidence 0.6 only",
        {"loss": {"pseudo_min_confidence": 0.6}},
    ),
    "walker_pseudo": ("CmFNet, pseudo labels from the walker alone", {"propagation": "random_walker"}),
    "no_propagation": ("CmFNet, strokes only (no pseudo labels)", {"propagation": "none"}),
    "pce": ("CmFNet, partial CE only", {"propagation": "none", "loss": OFF}),
    "regularized": (
        "CmFNet with the paper's regularizers",
        {"loss": {"affinity": 1.0, "consistency": 0.5, "alignment": 0.1}},
    ),
    "self_training": ("CmFNet, pseudo labels half its own prediction", {"loss": {"self_training": 0.5}}),
    "full_branches": ("CmFNet, per-modality outputs weighted 1", {"loss": {"branches": 1.0}}),
    "early_fusion": ("Early fusion (MONAI UNet, same recipe)", {"network": "unet"}),
    "dense": ("CmFNet on dense labels (upper bound)", {}),
}
UNTRAINED = {
    "propagation": "Our propagation: walker + appearance + CRF (no learning)",
    "random_walker": "Random walker from the strokes (no learning)",
    "graphcut": "MONAI Label Histogram+GraphCut (no learning)",
    "nnunet": "nnU-Net v2, ignore label (peer)",
}
TITLES = {**{k: v[0] for k, v in TRAINED.items()}, **UNTRAINED}


def train(key: str, dataset: Dataset, minutes: float, work: Path, device: str) -> dict:
    """Train through the product's train task; returns the run's stats and every published model with its time."""
    labels = LabelSet(dataset.labels)
    studies = dataset.dense_studies if key == "dense" else dataset.studies
    datastore = CmfnetDatastore(str(studies), labels=labels, companions=MODALITIES[1:], extensions=["*.nii.gz"])
    model = work / "model" / "cmfnet.pt"
    shutil.rmtree(work, ignore_errors=True)
    trainer = CmFNetTrainer(str(work / "model" / "cmfnet"), labels, MODALITIES, str(model), TrainSettings())
    snapshots: list[dict] = []
    start = time.time()
    watcher = _Snapshots(model, work / "snapshots", start, snapshots)
    watcher.start()
    try:
        trainer({"max_minutes": minutes, "device": device, **TRAINED[key][1]}, datastore)
    finally:
        watcher.stop()
    return {"seconds": time.time() - start, "model": str(model), "snapshots": snapshots, "stats": trainer.stats()}


class _Snapshots(threading.Thread):
    """Copies every newly published model, so the benchmark can score the model a user had at each moment."""

    def __init__(self, model: Path, folder: Path, start: float, found: list[dict]):
        super().__init__(daemon=True)
        self.model, self.folder, self.start_time, self.found = model, folder, start, found
        self._done = threading.Event()

    def run(self):
        seen = None
        while not self._done.is_set():
            seen = self._take_if_new(seen)
            self._done.wait(1.0)
        self._take_if_new(seen)

    def _take_if_new(self, seen):
        if not self.model.exists() or self.model.stat().st_mtime_ns == seen:
            return seen
        mtime = self.model.stat().st_mtime_ns
        self.folder.mkdir(parents=True, exist_ok=True)
        copy = self.folder / f"model_{len(self.found)}.pt"
        shutil.copyfile(self.model, copy)
        self.found.append({"minutes": round((time.time() - self.start_time) / 60, 2), "model": str(copy)})
        return mtime

    def stop(self):
        self._done.set()
        self.join()


def segment(model: str, dataset: Dataset, case: Case, device: str, use_strokes: bool) -> np.ndarray:
    """The product's infer task on one case (with the case's stored strokes when `use_strokes`)."""
    task = CmFNetSegmentation(model, LabelSet(dataset.labels), MODALITIES)
    strokes = _strokes(case) if use_strokes else None
    _, data = task({"image": case.image, "device": device, "strokes": strokes, "skip_writer": True})
    return np.asarray(data["pred"]).astype(np.uint8)


def segment_ct_alone(model: str, dataset: Dataset, case: Case, device: str) -> np.ndarray:
    """:func:`segment` of the case's CT with its companions absent, as the server answers a case uploaded
    without its MR: how much of what the model learned it can still give from the CT."""
    with tempfile.TemporaryDirectory() as folder:  # the CT alone: no companion folder beside it
        alone = Path(folder) / Path(case.image).name
        shutil.copyfile(case.image, alone)
        return segment(model, dataset, dataclasses.replace(case, image=str(alone)), device, use_strokes=False)


def propagation(dataset: Dataset, case: Case, device: str, refine: bool = True) -> np.ndarray:
    """Our propagation alone, on the working grid a plan for this image gives, as the scribbles task runs it."""
    reference = load_volume(case.image, "image")
    plan = make_plan([voxel_spacing(reference.affine)], [reference.shape[1:]], len(MODALITIES), 2)
    loaded = LoadModalitiesd(MODALITIES, spacing=plan.spacing)({"image": case.image})
    strokes = _strokes(case)
    k = len(dataset.labels)
    probabilities = stroke_probabilities(loaded["image"], strokes, k, MODALITIES[0], refine=refine)
    return keep_strokes(restore_labels(probabilities, reference.shape[1:]), strokes, k)


def random_walker(dataset: Dataset, case: Case, device: str) -> np.ndarray:
    """The random walker of our propagation without its appearance step and CRF: the classic baseline."""
    return propagation(dataset, case, device, refine=False)


def graphcut(dataset: Dataset, case: Case, device: str) -> np.ndarray:
    """MONAI Label's HistogramBasedGraphCut as shipped, one class against the rest; a voxel claimed by
    several classes goes to the class with the nearest stroke."""
    from monailabel.scribbles.infer import HistogramBasedGraphCut
    from monailabel.transform.writer import write_itk

    logging.getLogger("monailabel").setLevel(logging.WARNING)
    ct = nib.load(case.image)
    strokes, affine = _strokes(case), ct.affine
    k = len(dataset.labels)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    claimed = np.zeros((k, *strokes.shape), bool)
    distance = np.full((k, *strokes.shape), np.inf, np.float32)
    with tempfile.TemporaryDirectory() as folder:
        # NRRD: with a NIfTI image its Spacingd tries to update the request's `image_path` string as a meta dict
        image = str(Path(folder) / "image.nrrd")
        write_itk(np.asarray(ct.dataobj), image, affine, np.int16, compress=False)
        for c in range(1, k + 1):
            if not (strokes == c).any():
                continue
            codes = np.where(strokes == c, 3, np.where(strokes > 0, 2, 0)).astype(np.uint8)  # its fg 3, bg 2
            label = str(Path(folder) / f"strokes_{c}.nrrd")
            write_itk(codes, label, affine, np.uint8, compress=False)
            _, data = HistogramBasedGraphCut()({"image": image, "label": label, "device": "cpu", "skip_writer": True})
            pred = np.asarray(data["pred"])
            claimed[c - 1] = (pred[0] if pred.ndim == 4 else pred) > 0
            distance[c - 1] = distance_transform_edt(strokes != c, sampling=spacing)
    labels = np.where(claimed, distance, np.inf).argmin(0) + 1
    labels[~claimed.any(0)] = 0
    return labels.astype(np.uint8)


def nnunet(dataset: Dataset, minutes: float, work: Path, venv: Path) -> tuple[dict[str, np.ndarray], dict] | str:
    """nnU-Net v2 (benchmarks.nnunet_peer, its own venv) trained on the dataset's one stroked case and
    predicting it; a reason string when it cannot run."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"nnU-Net v2 not installed ({python} missing; `make nnunet-venv`)"
    stroked = [c for c in dataset.cases if c.strokes]
    if len(stroked) != 1 or len(dataset.cases) != 1:
        return "the peer trains on the stroked case and predicts that same case (one-case data sets only)"
    case = stroked[0]
    loaded = LoadModalitiesd(MODALITIES)({"image": case.image})  # on the CT grid, NaN where the MR has no data
    work.mkdir(parents=True, exist_ok=True)
    inputs, prediction = work / "case.npz", work / "prediction.npy"
    np.savez(
        inputs, channels=loaded["image"].numpy(), strokes=_strokes(case), affine=loaded["reference_affine"].numpy()
    )
    command = [str(python), "-m", "benchmarks.nnunet_peer", "--case", str(inputs), "--out", str(prediction)]
    command += [
        "--num-classes",
        str(len(dataset.labels)),
        "--minutes",
        str(minutes),
        "--work-dir",
        str(work / "nnunet"),
    ]
    done = subprocess.run(command, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if done.returncode != 0:
        return f"nnU-Net v2 failed: {done.stderr[-500:]}"
    return {case.case_id: np.load(prediction)}, json.loads(done.stdout.strip().splitlines()[-1])


def _strokes(case: Case) -> np.ndarray:
    return np.asarray(nib.load(case.strokes).dataobj).astype(np.int64)


PROPAGATIONS: dict[str, Callable] = {"propagation": propagation, "random_walker": random_walker, "graphcut": graphcut}
