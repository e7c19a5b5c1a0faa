"""OHIF in a real browser: the viewer MONAI Label serves, over Orthanc, runs `cmfnet` and shows its segmentation.

Debian's Chromium is driven by playwright-core (tests/browser, `make browser-deps`). The
screenshots stay in tests/artifacts/ohif/ (ignored by git): ohif_cmfnet.png is the window
after the segmentation, before.png / after.png the viewport grid.
"""

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from lib.data.dicom_export import export_phantom, stow
from lib.data.phantoms import DEMO_LABELS
from tests.conftest import ROOT, publish_untrained_model, running_server
from tests.orthanc import require, running_orthanc

BROWSER = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "tests" / "artifacts" / "ohif"


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """Orthanc with one CT + MR study, and the app over it with its default settings."""
    require("/usr/bin/chromium", "Chromium")
    require(BROWSER / "node_modules" / "playwright-core", "playwright-core (run `make browser-deps`)")
    root = tmp_path_factory.mktemp("ohif")
    with running_orthanc(root / "orthanc") as orthanc:
        case = export_phantom(0, "case_000", root / "dicom")
        stow(orthanc.dicomweb, sorted((root / "dicom").glob("*/*/*.dcm")))
        env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "cache")}
        with running_server(root, orthanc.dicomweb, env=env) as server:
            publish_untrained_model(server)
            yield server, case


def colored_pixels(path: Path) -> int:
    """Pixels that are not grey: the CT is drawn in greys, the segmentation in colour."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 40).sum())


def test_ohif_runs_cmfnet_and_shows_the_segmentation(viewer):
    server, case = viewer
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    run = subprocess.run(
        ["node", str(BROWSER / "ohif_cmfnet.mjs"), server.url, case["StudyInstanceUID"], str(ARTIFACTS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    written = ARTIFACTS / "result.json"  # written unless the browser did not even start
    result = json.loads(written.read_text()) if written.exists() else {}
    assert run.returncode == 0, f"{run.stderr[-3000:]}\n{result}"
    assert result["pageErrors"] == [] and result["failedRequests"] == [], result
    assert result["infoStatus"] == 200
    assert result["inferStatus"] == 200
    assert f"image={case['CT']}" in result["inferUrl"], "OHIF must segment the CT series"

    # what OHIF holds is the server's label for the CT, voxel for voxel (segments matched by name)
    content = server.http.post(f"/infer/cmfnet?image={case['CT']}&output=image").content
    label = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(content)).dataobj)
    to_ohif = np.zeros(max(DEMO_LABELS.values()) + 1, np.uint8)
    for index, name in result["segments"].items():
        to_ohif[DEMO_LABELS[name]] = int(index)
    shown = np.fromfile(ARTIFACTS / "labelmap.bin", np.uint8).reshape(result["dimensions"], order="F")
    assert shown.shape == label.shape
    assert (label > 0).any()
    np.testing.assert_array_equal(shown, to_ohif[label])

    # and it is drawn: the viewports gain coloured pixels
    assert colored_pixels(ARTIFACTS / "after.png") > colored_pixels(ARTIFACTS / "before.png") + 10_000
