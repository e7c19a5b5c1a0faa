"""The datastore over HTTP: uploads, stroke replacement and removal, and bad input (a clear 4xx,
nothing stored lost, the server keeps serving).

The module's server is shared: each test uses image ids of its own or leaves what it changed as it found
it; a test that needs a server without any model in memory takes `fresh_server`."""

import gzip
import hashlib
import shutil

import nibabel as nib
import numpy as np
import pytest

from lib.data.phantoms import DEMO_LABELS
from tests.conftest import copy_of_demo, publish_untrained_model, running_server

K = len(DEMO_LABELS)


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("bad"))
    with running_server(studies.parent, studies, {"auto_train": "false"}) as server:
        yield server


def checksum(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def put_label(server, image_id: str, path, tag="scribbles"):
    with open(path, "rb") as f:
        return server.http.put("/datastore/label", params={"image": image_id, "tag": tag}, files={"label": f})


def put_image(server, image_id: str, path):
    with open(path, "rb") as f:
        return server.http.put("/datastore/image", params={"image": image_id}, files={"file": f})


def image_ids(server) -> set[str]:
    return set(server.http.get("/datastore/", params={"output": "all"}).json()["objects"])


@pytest.mark.parametrize(
    "content",
    [b"this is not an image", gzip.compress(b"\x5c\x01\x00\x00" + b"garbage" * 10)],
    ids=["text", "corrupt-nifti"],
)
def test_non_image_upload_is_refused_and_nothing_is_added(server, tmp_path, content):
    upload = tmp_path / "junk.nii.gz"
    upload.write_bytes(content)
    before = image_ids(server)
    response = put_image(server, "junk", upload)
    assert response.status_code == 422
    assert "not a readable image" in response.json()["detail"]
    assert image_ids(server) == before
    assert not (server.studies / "junk.nii.gz").exists()


def test_scribbles_of_wrong_shape_are_refused_and_stored_ones_kept(server, tmp_path):
    stored = server.studies / "labels" / "scribbles" / "case_000.nii.gz"
    before = checksum(stored)
    ct = nib.load(server.studies / "case_000.nii.gz")
    wrong = tmp_path / "wrong_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), ct.affine), wrong)
    response = put_label(server, "case_000", wrong)
    assert response.status_code == 422
    assert "shape" in response.json()["detail"]
    assert checksum(stored) == before


def test_scribble_values_above_background_are_refused(server, tmp_path):
    stored = server.studies / "labels" / "scribbles" / "case_000.nii.gz"
    before = checksum(stored)
    ct = nib.load(server.studies / "case_000.nii.gz")
    values = np.zeros(ct.shape, np.uint8)
    values[10, 10, 10] = K + 2
    bad = tmp_path / "bad_values.nii.gz"
    nib.save(nib.Nifti1Image(values, ct.affine), bad)
    response = put_label(server, "case_000", bad)
    assert response.status_code == 422
    assert str(K + 2) in response.json()["detail"]
    assert checksum(stored) == before


def test_final_label_with_class_above_k_is_refused(server, tmp_path):
    ct = nib.load(server.studies / "case_001.nii.gz")
    values = np.zeros(ct.shape, np.uint8)
    values[5, 5, 5] = K + 3
    bad = tmp_path / "bad_final.nii.gz"
    nib.save(nib.Nifti1Image(values, ct.affine), bad)
    assert put_label(server, "case_001", bad, tag="final").status_code == 422
    assert not (server.studies / "labels" / "final" / "case_001.nii.gz").exists()


def test_unknown_image_id_is_404(server, tmp_path):
    assert server.http.post("/infer/cmfnet?image=no_such_case&output=json").status_code == 404
    ct = nib.load(server.studies / "case_000.nii.gz")
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), label)
    response = put_label(server, "no_such_case", label)
    assert response.status_code == 404
    assert "no_such_case" in response.json()["detail"]


def test_unreadable_model_file_is_a_clear_error(fresh_server):
    """On a server that never loaded a model: one already in memory would keep serving (the next test)."""
    server = fresh_server
    publish_untrained_model(server)
    good = server.model_file.read_bytes()
    server.model_file.write_bytes(good[: len(good) // 2])  # a copy cut off half way, nothing loaded before
    response = server.http.post("/infer/cmfnet?image=case_002&output=json")
    assert response.status_code == 409
    assert "cannot be loaded" in response.json()["detail"]


def test_missing_companion_is_served_with_ct_only_and_says_so(server, tmp_path):
    publish_untrained_model(server)
    ct_only = tmp_path / "ct_only.nii.gz"
    shutil.copy(server.studies / "case_002.nii.gz", ct_only)
    assert put_image(server, "ct_only", ct_only).status_code == 200
    response = server.http.post("/infer/cmfnet?image=ct_only&output=json")
    assert response.status_code == 200, response.text
    assert response.json()["modalities_used"] == ["ct"]
    assert response.json()["modalities_missing"] == ["mr"]


def test_companion_outside_the_ct_in_world_space_is_a_clear_error(server, tmp_path):
    publish_untrained_model(server)
    shutil.copy(server.studies / "case_002.nii.gz", tmp_path / "far_mr.nii.gz")
    assert put_image(server, "far_mr", tmp_path / "far_mr.nii.gz").status_code == 200
    mr = nib.load(server.studies / "mr" / "case_002.nii.gz")
    moved = mr.affine.copy()
    moved[:3, 3] += [2000.0, 0.0, 0.0]  # two metres to the side
    nib.save(nib.Nifti1Image(np.asarray(mr.dataobj), moved), server.studies / "mr" / "far_mr.nii.gz")
    response = server.http.post("/infer/cmfnet?image=far_mr&output=json")
    assert response.status_code == 422
    assert "covers 0.0%" in response.json()["detail"]


def test_half_written_model_file_never_breaks_serving(server):
    publish_untrained_model(server)
    assert server.http.post("/infer/cmfnet?image=case_002&output=json").status_code == 200
    good = server.model_file.read_bytes()
    server.model_file.write_bytes(good[: len(good) // 2])  # a copy cut off half way
    response = server.http.post("/infer/cmfnet?image=case_002&output=json")
    assert response.status_code == 200, "the model already in memory keeps serving"
    server.model_file.write_bytes(good)


def test_companion_upload_makes_a_ct_only_case_cross_modal(server, tmp_path):
    publish_untrained_model(server)
    shutil.copy(server.studies / "case_001.nii.gz", tmp_path / "pair.nii.gz")
    assert put_image(server, "pair", tmp_path / "pair.nii.gz").status_code == 200
    assert server.http.post("/infer/cmfnet?image=pair&output=json").json()["modalities_missing"] == ["mr"]
    with open(server.studies / "mr" / "case_001.nii.gz", "rb") as f:
        response = server.http.put(
            "/datastore/image", params={"image": "pair"}, data={"params": '{"modality": "mr"}'}, files={"file": f}
        )
    assert response.status_code == 200, response.text
    assert (server.studies / "mr" / "pair.nii.gz").exists()
    assert "pair" in image_ids(server) and len([i for i in image_ids(server) if i.startswith("pair")]) == 1
    assert server.http.post("/infer/cmfnet?image=pair&output=json").json()["modalities_used"] == ["ct", "mr"]


def test_strokes_are_merged_unless_replaced_on_purpose_and_can_be_deleted(server, tmp_path):
    ct = nib.load(server.studies / "case_002.nii.gz")
    first, second = np.zeros(ct.shape, np.uint8), np.zeros(ct.shape, np.uint8)
    first[10:20, 30, 20] = 1
    second[10:15, 30, 20] = K + 1  # overlaps half of the first stroke
    second[50, 50:60, 20] = 2
    for index, strokes in enumerate((first, second)):
        nib.save(nib.Nifti1Image(strokes, ct.affine), tmp_path / f"s{index}.nii.gz")
    stored = server.studies / "labels" / "scribbles" / "case_002.nii.gz"

    assert put_label(server, "case_002", tmp_path / "s0.nii.gz").status_code == 200
    assert put_label(server, "case_002", tmp_path / "s1.nii.gz").status_code == 200
    np.testing.assert_array_equal(np.asarray(nib.load(stored).dataobj), np.where(second > 0, second, first))

    with open(tmp_path / "s0.nii.gz", "rb") as f:
        response = server.http.put(
            "/datastore/label",
            params={"image": "case_002", "tag": "scribbles"},
            data={"params": '{"replace": true}'},
            files={"label": f},
        )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.asarray(nib.load(stored).dataobj), first)

    assert server.http.delete("/datastore/label", params={"id": "case_002", "tag": "scribbles"}).status_code == 200
    assert not stored.exists()


def test_server_still_serves_whatever_ran_before(server):
    info = server.http.get("/info/")
    assert info.status_code == 200
    assert "cmfnet" in info.json()["models"]
