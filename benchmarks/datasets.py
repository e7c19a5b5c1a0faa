"""The benchmarks' data, written as datastore folders so that every method reads them as the server does.

- `phantom`: paired CT/MR phantoms (lib.data.phantoms): strokes on 4 training cases, scored on 3 test
  cases that no method ever sees strokes of (the next patient).
- `real`: the real abdominal CT with its simulated MR (lib.data.real_scans), strokes on the case,
  scored on its unstroked voxels (what a clinician gets back).
- `real_half`: the same scan with strokes on the lower half of the slices that hold an organ (along z)
  only, scored on the slices above,
  where no stroke lies: propagation cannot reach there, only a learned model can.
- `real_partial_mr`: as `real`, but the MR covers only the upper abdomen (PARTIAL_MR_COVER of its
  slices, about the upper 55 % of the CT): below it the CT is alone, as in a CT + MR pair whose MR was
  planned on the liver and kidneys. Where a modality has no data, the fusion must do without it.
- `real_moving`: as `real`, but the MR's anatomy is displaced against the CT's by a smooth field of up to
  MR_MOTION_MM (breathing and bowel between two scans, which rigid registration leaves): the modalities
  disagree at the organs' edges by up to two voxels, as in a clinical pair. Not in the default run.
- `real_fine`: as `real`, with the CT on a 1 x 1 x 2 mm grid (FINE_CT_SPACING, 18 M voxels), the voxel
  size of a clinical abdominal CT, so a run plans, prepares and answers at that voxel size; the MR stays on
  its coarser grid. Not in the default run (DEFAULT_NAMES): each method takes minutes longer there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from lib.data.cases import write_case
from lib.data.phantoms import make_case
from lib.data.real_scans import REAL_LABELS, abdomen_scribbles, make_abdomen_case, missing_reason
from lib.data.scribbles import PROTOCOL, annotated_fraction, simulate_scribbles
from lib.labels import DEMO_LABELS

TRAIN_SEEDS, TEST_SEEDS = 1000, 3000
DEFAULT_NAMES = ("phantom", "real", "real_half", "real_partial_mr")
NAMES = (*DEFAULT_NAMES, "real_moving", "real_fine")
PARTIAL_MR_COVER = 0.5
FINE_CT_SPACING = (1.0, 1.0, 2.0)
MR_MOTION_MM = 6.0
# the datasets whose tables also score /infer's answer on the stroked case (strokes honoured), not the model alone only
SERVED_ON_STROKED_CASE = ("real", "real_moving", "real_fine")
CASE_FILES = ("image", "truth", "strokes", "scored")  # a Case's paths, recorded relative to the dataset's folder


@dataclass
class Case:
    case_id: str
    image: str  # the CT: the datastore image (its MR is in mr/ beside it)
    truth: str
    strokes: str | None  # the stored scribbles, if the case has any
    scored: str  # a mask of the voxels that count

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(nib.load(self.truth).dataobj), np.asarray(nib.load(self.scored).dataobj).astype(bool)


@dataclass
class Dataset:
    name: str
    labels: dict[str, int]
    studies: Path  # scribbles as the server stores them
    dense_studies: Path  # the same cases with their truth as `final` labels instead
    cases: list[Case]
    protocol: str
    annotated_fraction: float
    facts: dict = field(default_factory=dict)


def build(name: str, folder: Path, seed: int = 0) -> Dataset:
    """Write (or reuse) the dataset `name` under `folder`; FileNotFoundError when the real scan is missing."""
    folder = Path(folder) / f"{name}_seed{seed}"
    meta = _written(folder)
    if meta is None:
        shutil.rmtree(folder, ignore_errors=True)
        _write(name, folder, seed)
        meta = _written(folder)
    return Dataset(
        name=name,
        labels=meta["labels"],
        studies=folder / "studies",
        dense_studies=folder / "dense" / "studies",
        cases=[Case(**{**c, **{k: str(folder / c[k]) for k in CASE_FILES if c[k]}}) for c in meta["cases"]],
        protocol=meta["protocol"],
        annotated_fraction=meta["annotated_fraction"],
        facts=meta["facts"],
    )


def _written(folder: Path) -> dict | None:
    """The dataset written in `folder`, or None when it is not there whole (its files are recorded relative
    to the folder, so a cache copied or reached through a link still reads)."""
    summary = folder / "dataset.json"
    if not summary.exists():
        return None
    meta = json.loads(summary.read_text())
    files = [c[k] for c in meta["cases"] for k in CASE_FILES if c[k]]
    return meta if all(not Path(f).is_absolute() and (folder / f).exists() for f in files) else None


def _write(name: str, folder: Path, seed: int) -> None:
    if name == "phantom":
        labels = DEMO_LABELS
        train = [(f"train_{i}", make_case(TRAIN_SEEDS + i), True) for i in range(4)]
        test = [(f"test_{i}", make_case(TEST_SEEDS + i), False) for i in range(3)]
        protocol = "strokes on 4 training phantoms; scored on 3 other phantoms that have no strokes"
        cases = [(i, c, PROTOCOL if s else None) for i, c, s in train + test]
    else:
        if missing_reason():
            raise FileNotFoundError(missing_reason())
        labels = REAL_LABELS
        case = make_abdomen_case(
            seed,
            ct_spacing=FINE_CT_SPACING if name == "real_fine" else None,
            mr_cover=PARTIAL_MR_COVER if name == "real_partial_mr" else 1.0,
            mr_motion_mm=MR_MOTION_MM if name == "real_moving" else 0.0,
        )
        cases = [("abdomen", case, "real")]
        protocol = (
            "strokes on the lower half of the slices holding an organ (along z), scored on the slices above"
            if name == "real_half"
            else "strokes on the scan, scored on its unstroked voxels"
        )
        if name == "real_partial_mr":
            protocol += f"; the MR covers the upper {PARTIAL_MR_COVER:.0%} of its own slices only"
        if name == "real_moving":
            protocol += f"; the MR's anatomy moved against the CT's by up to {MR_MOTION_MM:g} mm"
        if name == "real_fine":
            protocol += "; the CT interpolated onto a clinical scan's grid, the MR on its own coarser grid"
    records, fractions = [], []
    for case_id, case, settings in cases:
        strokes = None
        if settings == "real":
            strokes = abdomen_scribbles(case, seed)
        elif settings is not None:
            strokes = simulate_scribbles(case.truth, len(labels), seed, settings, image=case.ct)
        scored = np.ones(case.truth.shape, bool)
        if strokes is not None and name == "real_half":
            organ_slices = np.flatnonzero((case.truth > 0).any(axis=(0, 1)))
            half = (organ_slices[0] + organ_slices[-1] + 1) // 2  # every organ spans this slice on this scan
            strokes[..., half:] = 0
            scored[..., :half] = False
        elif strokes is not None and name == "phantom":
            scored[:] = False  # a training case: the phantoms are scored on the next patients only
        elif strokes is not None:
            scored = strokes == 0
        if strokes is not None:
            fractions.append(annotated_fraction(strokes))
        paths = write_case(folder / "studies", case_id, case, strokes, truth_dir=folder / "truth")
        write_case(folder / "dense" / "studies", case_id, case, final=strokes is not None)
        mask = folder / "scored" / f"{case_id}.nii.gz"
        mask.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(scored.astype(np.uint8), case.ct_affine), mask)
        records.append(
            {
                "case_id": case_id,
                "image": str(paths["image"].relative_to(folder)),
                "truth": str(paths["truth"].relative_to(folder)),
                "strokes": str(paths["scribbles"].relative_to(folder)) if "scribbles" in paths else None,
                "scored": str(mask.relative_to(folder)),
            }
        )
    shape = list(cases[0][1].ct.shape)
    meta = {
        "labels": labels,
        "cases": records,
        "protocol": protocol,
        "annotated_fraction": float(np.mean(fractions)),
        "facts": {"ct_shape": shape, "ct_spacing": np.linalg.norm(cases[0][1].ct_affine[:3, :3], axis=0).tolist()},
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
