"""Batch inference over a real server's datastore: one valid label per image, a broken case reported and skipped."""

import shutil
import time

import nibabel as nib
import numpy as np
import pytest

from lib.data.phantoms import DEMO_LABELS
from tests.conftest import copy_of_demo, publish_untrained_model, running_server

CASES = ["case_000", "case_001", "case_002"]
BROKEN = "case_broken"  # a readable CT whose MR companion is not an image


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("batch"))
    shutil.copy(studies / "case_002.nii.gz", studies / f"{BROKEN}.nii.gz")
    (studies / "mr" / f"{BROKEN}.nii.gz").write_bytes(b"not a NIfTI file")
    with running_server(studies.parent, studies, conf={"auto_train": "false"}) as server:
        publish_untrained_model(server)
        yield server


def wait_for_batch(server, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = server.http.get("/batch/infer").json()
        if task["status"] not in ("SUBMITTED", "RUNNING"):
            return task
        time.sleep(1)
    raise TimeoutError(f"batch inference did not finish in {timeout} s")


def assert_valid_label(server, image_id: str, tag: str) -> None:
    ct = nib.load(server.studies / f"{image_id}.nii.gz")
    label = nib.load(server.studies / "labels" / tag / f"{image_id}.nii.gz")
    assert label.shape == ct.shape
    np.testing.assert_allclose(label.affine, ct.affine, atol=1e-3)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, *DEMO_LABELS.values()}


def test_batch_labels_every_image_and_skips_the_broken_one(server):
    response = server.http.post("/batch/infer/cmfnet", params={"images": "all"}, json={"label_tag": "batch"})
    assert response.status_code == 200, response.text
    task = wait_for_batch(server)
    assert task["status"] == "DONE", task
    details = "\n".join(task["details"])  # the last lines of the batch's log
    assert "=> 4 / 4" in details
    assert "3 of 4 images labelled (tag 'batch'); 1 failed and skipped: ['case_broken']" in details

    for image_id in CASES:
        assert_valid_label(server, image_id, "batch")
    assert not (server.studies / "labels" / "batch" / f"{BROKEN}.nii.gz").exists()

    log = server.log.read_text()
    assert f"image {BROKEN} failed and is skipped" in log
    assert "MR companion of case_broken" in log and "not a readable image" in log
    for done in range(1, 5):
        assert f"=> {done} / 4" in log, f"no progress line for case {done} of 4"


def test_batch_on_labelled_images_only_reports_each_result(server, demo):
    shutil.copy(demo / "truth" / "case_001.nii.gz", server.studies / "labels" / "final" / "case_001.nii.gz")
    deadline = time.monotonic() + 30
    while server.http.get("/info/").json()["datastore"]["completed"] < 1:  # the datastore reloads on file changes
        assert time.monotonic() < deadline, "the final label was not picked up"
        time.sleep(0.5)

    response = server.http.post(
        "/batch/infer/cmfnet", params={"images": "labeled", "run_sync": True}, json={"label_tag": "labelled_only"}
    )
    assert response.status_code == 200, response.text
    results = response.json()
    assert set(results) == {"case_001"}
    assert results["case_001"]["label"] == "case_001"
    assert results["case_001"]["params"]["modalities_used"] == ["ct", "mr"]
    assert_valid_label(server, "case_001", "labelled_only")
    assert not (server.studies / "labels" / "labelled_only" / "case_000.nii.gz").exists()


def test_failed_case_is_reported_with_its_reason(server):
    response = server.http.post(
        "/batch/infer/cmfnet", params={"images": "all", "run_sync": True}, json={"label_tag": "again"}
    )
    assert response.status_code == 200, response.text
    results = response.json()
    assert set(results) == {*CASES, BROKEN}
    assert "not a readable image" in results[BROKEN]["error"]
    assert all("error" not in results[i] for i in CASES)
