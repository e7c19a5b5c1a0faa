"""The benchmark's data, written as datastore folders (CT + `mr/` companion + scribbles + truth) so that
training and evaluation read them through the app's own pipeline (lib.training).

- `phantom`: paired CT/MR phantoms (lib.data.phantoms). Training, tuning and test cases come from
  disjoint phantom seeds (TRAIN_SEEDS, TUNE_SEEDS, TEST_SEEDS): methods train on the training cases'
  scribbles (or dense truth) and are scored on the test cases they never saw.
- `real`: the real abdominal CT with its simulated MR (lib.data.real_scans). Scribbles on the case,
  scored on the same case: what a clinician gets back after scribbling a scan.

Scribbles depend on the run seed (and the case), so every seed draws new scribbles; within a seed,
every method gets the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.data.cases import write_case
from lib.data.phantoms import DEMO_LABELS, make_case
from lib.data.real_scans import REAL_LABELS, make_abdomen_case, missing_reason
from lib.data.scribbles import ScribbleSettings, annotated_fraction, simulate_scribbles

TRAIN_SEEDS = 1000
TUNE_SEEDS = 2000
TEST_SEEDS = 3000
REAL_MR_SEED = 0  # the simulated MR is the same for every run seed; only the scribbles change
# The scribble library's defaults (WORD-style: per axial slice, erode, skeletonize, keep a part, on 30 % of
# the slices holding a class; background strokes from all of label 0, air included), plus a 5-pixel minimum
# stroke: the skeleton of a small round blob (the tumour) is a single pixel, which no annotator would draw.
SCRIBBLES = ScribbleSettings(min_length=5)


@dataclass
class Case:
    case_id: str
    image: str  # the CT (datastore image); its MR companion is in mr/ beside it
    truth: str
    scribbles: str
    spacing: tuple[float, float, float]
    annotated_fraction: float

    def item(self, dense: bool) -> dict:
        """An input of lib.training's pipelines: scribbles (sparse) or the truth (dense) as the label."""
        return {"image": self.image, "label": self.truth if dense else self.scribbles, "dense": dense}


@dataclass
class Dataset:
    name: str
    labels: dict[str, int]
    train: list[Case]
    test: list[Case]
    protocol: str
    notes: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _scribble_seed(run_seed: int, case_seed: int) -> int:
    return 7919 * run_seed + case_seed


def _write(folder: Path, case_id: str, case, labels, scribble_seed: int, settings: ScribbleSettings) -> Case:
    scribbles = simulate_scribbles(case.truth, len(labels), scribble_seed, settings, image=case.ct)
    paths = write_case(folder / "studies", case_id, case, scribbles, truth_dir=folder / "truth")
    spacing = tuple(float(s) for s in np.linalg.norm(case.ct_affine[:3, :3], axis=0))
    return Case(
        case_id,
        str(paths["image"]),
        str(paths["truth"]),
        str(paths["scribbles"]),
        spacing,
        annotated_fraction(scribbles),
    )


def phantom_dataset(
    root: Path, run_seed: int, train_cases: int, test_cases: int, grid_scale: float, split: str = "test"
) -> Dataset:
    """Phantom cases under `root`; `split` "test" scores on TEST_SEEDS, "tune" on TUNE_SEEDS (for tuning)."""
    folder = Path(root) / f"phantom_g{grid_scale:g}_seed{run_seed}"
    settings = SCRIBBLES
    evaluation_seeds = TEST_SEEDS if split == "test" else TUNE_SEEDS
    train, test = [], []
    for group, first, count in ((train, TRAIN_SEEDS, train_cases), (test, evaluation_seeds, test_cases)):
        for index in range(count):
            case_seed = first + index
            group.append(
                _write(
                    folder,
                    f"case_{case_seed}",
                    make_case(case_seed, grid_scale),
                    DEMO_LABELS,
                    _scribble_seed(run_seed, case_seed),
                    settings,
                )
            )
    shape = make_case(TRAIN_SEEDS, grid_scale).ct.shape
    return Dataset(
        name="phantom",
        labels=dict(DEMO_LABELS),
        train=train,
        test=test,
        protocol=(
            f"paired CT/MR phantoms at {shape[0]}x{shape[1]}x{shape[2]} (grid scale {grid_scale:g}); train on "
            f"{train_cases} cases, score on {test_cases} other cases"
        ),
        notes={"shape": list(shape)},
    )


def real_dataset(root: Path, run_seed: int, ct_spacing: float | None) -> Dataset | None:
    """The real abdominal CT + simulated MR; None when the scan is not there (see `real_missing_reason`)."""
    if missing_reason():
        return None
    folder = Path(root) / f"real_s{ct_spacing or 'native'}_seed{run_seed}"
    case = make_abdomen_case(REAL_MR_SEED, ct_spacing)
    settings = SCRIBBLES
    written = _write(folder, "abdomen", case, REAL_LABELS, _scribble_seed(run_seed, 0), settings)
    shape = case.ct.shape
    return Dataset(
        name="real",
        labels=dict(REAL_LABELS),
        train=[written],
        test=[written],
        protocol=(
            f"real abdominal CT (TotalSegmentator test scan) at {shape[0]}x{shape[1]}x{shape[2]}, "
            f"{written.spacing[0]:g} mm, with a simulated MR; scribbles on the case, scored on the same case"
        ),
        notes={"shape": list(shape)},
    )


def real_missing_reason() -> str | None:
    return missing_reason()
