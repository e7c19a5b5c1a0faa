"""Write one paired CT/MR case into a datastore folder, in the demo's layout (see lib.data.demo).

<studies>/<id>.nii.gz                     CT, the datastore image (reference)
<studies>/mr/<id>.nii.gz                  its MR companion, on its own grid and affine
<studies>/labels/scribbles/<id>.nii.gz    scribbles (stored convention), when given
<studies>/labels/final/<id>.nii.gz        dense truth as a `final` label, when asked
<truth>/<id>.nii.gz                       dense ground truth, for evaluation only, when given
"""

from pathlib import Path

import nibabel as nib
import numpy as np

from lib.data.phantoms import PhantomCase
from lib.labels import SCRIBBLES_TAG

COMPANION = "mr"  # the companion modality of the generated cases (the server's default `--conf modalities ct,mr`)


def write_case(
    studies: Path,
    case_id: str,
    case: PhantomCase,
    scribbles: np.ndarray | None = None,
    truth_dir: Path | None = None,
    final: bool = False,
) -> dict[str, Path]:
    """Write the case's files; returns their paths by role (`image`, `mr`, `scribbles`, `final`, `truth`)."""
    studies = Path(studies)
    name = f"{case_id}.nii.gz"
    paths = {"image": studies / name, "mr": studies / COMPANION / name}
    if scribbles is not None:
        paths["scribbles"] = studies / "labels" / SCRIBBLES_TAG / name
    if final:
        paths["final"] = studies / "labels" / "final" / name
    if truth_dir is not None:
        paths["truth"] = Path(truth_dir) / name
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.round(case.ct).astype(np.int16), case.ct_affine), paths["image"])
    nib.save(nib.Nifti1Image(case.mr.astype(np.float32), case.mr_affine), paths["mr"])
    if scribbles is not None:
        nib.save(nib.Nifti1Image(scribbles.astype(np.uint8), case.ct_affine), paths["scribbles"])
    if final:
        nib.save(nib.Nifti1Image(case.truth.astype(np.uint8), case.ct_affine), paths["final"])
    if truth_dir is not None:
        nib.save(nib.Nifti1Image(case.truth.astype(np.uint8), case.ct_affine), paths["truth"])
    return paths
