"""OHIF 3 (served at /viewer/) in a real browser, through a real PACS: paint, save, retrain, see the result.

Debian's Chromium, driven by playwright-core (tests/browser/ohif_scribbles.mjs), paints strokes for
liver, spleen and background with the brush in OHIF's segmentation mode and stores them as a DICOM
SEG in Orthanc; the server finds the SEG by polling, imports it as scribbles, retrains, and stores
a result SEG that OHIF then opens. Screenshots stay in tests/artifacts/ohif_scribbles/ (ignored by
git): painted.png (the strokes), paint.png, result.png (the window with the result), and timing.json.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lib.data.dicom_export import export_phantom, stow
from lib.data.phantoms import DEMO_LABELS, make_case
from lib.dicomweb.result_seg import result_description
from lib.viewer import DIST
from tests.conftest import ROOT, publish_untrained_model, running_server, wait_for
from tests.dicom_seg import ct_series
from tests.orthanc import require, running_orthanc, seg_series

BROWSER = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "tests" / "artifacts" / "ohif_scribbles"
SLICE = 24  # the CT slice the annotator paints on
STROKES = {"liver": [(56, 48), (76, 48), (66, 40)], "spleen": [(26, 47), (26, 60)], "background": [(4, 8), (20, 8)]}
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """Orthanc with one CT + MR study; the app polls it every 2 s and retrains (4 steps) after new strokes."""
    require("/usr/bin/chromium", "Chromium")
    require(BROWSER / "node_modules" / "playwright-core", "playwright-core (run `make browser-deps`)")
    require(DIST / "index.html", "the OHIF viewer (run `make viewer-deps`)")
    root = tmp_path_factory.mktemp("ohif_scribbles")
    with running_orthanc(root / "orthanc") as orthanc:
        case = export_phantom(0, "case_000", root / "dicom")
        stow(orthanc.dicomweb, sorted((root / "dicom").glob("*/*/*.dcm")))
        # runs start from scratch, so each publishes at its first validation (a 4-step fine-tune need not
        # beat the published model)
        conf = {
            "max_steps": "4",
            "val_every": "2",
            "auto_train_delay": "1",
            "seg_poll_interval": "2",
            "pretrained": "false",
        }
        env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache")}
        with running_server(root, orthanc.dicomweb, conf=conf, env=env) as server:
            publish_untrained_model(server)
            server.cache = next(p for p in (root / "cache").iterdir() if p.is_dir())
            yield server, case, orthanc


def world(i: float, j: float, k: float) -> list[float]:
    """LPS world point (what OHIF works in) of a CT voxel of the phantom."""
    return (RAS_TO_LPS * (make_case(0).ct_affine @ [i, j, k, 1.0])[:3]).tolist()


def browser(*args: str) -> dict:
    """Run one step of the browser script; its result.json."""
    step = args[0]
    run = subprocess.run(
        ["node", str(BROWSER / "ohif_scribbles.mjs"), *args], capture_output=True, text=True, timeout=600
    )
    written = ARTIFACTS / f"{step}.json"
    result = json.loads(written.read_text()) if written.exists() else {}
    assert run.returncode == 0, f"{run.stderr[-3000:]}\n{result}"
    assert result["pageErrors"] == [] and result["failedRequests"] == [], result
    return result


def held_volume(held: dict, ct: list, affine: np.ndarray) -> np.ndarray:
    """OHIF's painted voxels (slice position, row, column, segment) as stored stroke values on the CT grid."""
    values = {**DEMO_LABELS, "background": len(DEMO_LABELS) + 1}
    along_row, along_column = (np.array(ct[0].ImageOrientationPatient[i : i + 3], float) for i in (0, 3))
    spacing = [float(v) for v in ct[0].PixelSpacing]
    volume = np.zeros(make_case(0).ct.shape, np.uint8)
    for position, row, column, segment in held["voxels"]:
        lps = np.array(position) + column * spacing[1] * along_row + row * spacing[0] * along_column
        voxel = np.linalg.solve(affine, [*(RAS_TO_LPS * lps), 1.0])[:3]
        volume[tuple(np.rint(voxel).astype(int))] = values[held["segments"][str(segment)]]
    return volume


def test_strokes_painted_in_ohif_are_imported_retrained_on_and_the_result_opens_in_ohif(viewer):
    server, case, orthanc = viewer
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    strokes = [{"name": name, "points": [world(i, j, SLICE) for i, j in points]} for name, points in STROKES.items()]
    (ARTIFACTS / "strokes.json").write_text(json.dumps(strokes))
    model_before = server.model_file.stat().st_mtime
    started = time.monotonic()
    timing = {}

    painted = browser(
        "paint", server.url, case["StudyInstanceUID"], case["CT"], str(ARTIFACTS / "strokes.json"), str(ARTIFACTS)
    )
    timing["paint and store in OHIF"] = time.monotonic() - started
    assert painted["storeStatus"] == 200
    assert sorted(painted["segments"].values()) == sorted(STROKES)
    [seg] = [s for s in orthanc.series(Modality="SEG") if s["0008103E"]["Value"][0] == "scribbles"]  # in the PACS

    def imported():
        recent = server.http.get("/info/").json()["pacs"]["recent"]
        return next(
            (r for r in recent if r["series"] == seg["0020000E"]["Value"][0] and r["status"] == "imported"), None
        )

    record = wait_for(imported, 60, "the SEG imported as scribbles")
    timing["stored -> imported"] = time.monotonic() - started - timing["paint and store in OHIF"]
    affine = nib.load(server.cache / f"{case['CT']}.nii.gz").affine  # the CT the server holds
    expected = held_volume(painted, ct_series(Path(case["folder"]) / "CT"), affine)
    assert {int(v) for v in np.unique(expected)} == {
        0,
        DEMO_LABELS["liver"],
        DEMO_LABELS["spleen"],
        len(DEMO_LABELS) + 1,
    }
    stored = np.asarray(nib.load(server.cache / "labels" / "scribbles" / f"{case['CT']}.nii.gz").dataobj)
    np.testing.assert_array_equal(stored, expected)  # the painted voxels, and only them, as scribbles
    assert record["voxels"] == int((expected > 0).sum())

    wait_for(lambda: server.model_file.stat().st_mtime > model_before, 600, "a retrained model published")
    wait_for(lambda: server.http.get("/train/?check_if_running=true").status_code == 404, 600, "the run finished")
    assert server.http.get("/train/").json()["status"] == "DONE"
    description = result_description(server.model_file.stat().st_mtime)
    wait_for(lambda: seg_series(orthanc, case["StudyInstanceUID"], description), 300, "the result SEG in the PACS")
    timing["stored -> retrained -> result SEG in the PACS"] = (
        time.monotonic() - started - timing["paint and store in OHIF"]
    )

    shown = browser(
        "result",
        server.url,
        case["StudyInstanceUID"],
        case["CT"],
        description,
        str(ARTIFACTS),
        str(strokes[0]["points"][0][2]),
    )
    assert set(shown["segments"].values()) <= set(DEMO_LABELS) and shown["voxelCount"] > 0
    timing["total"] = time.monotonic() - started
    (ARTIFACTS / "timing.json").write_text(json.dumps(timing, indent=1))
