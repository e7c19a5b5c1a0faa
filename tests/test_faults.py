"""The fault table: one test per fault or bad input, through a real server.

Each test sends one bad request (or a request at a bad moment), checks the answer (status and
message) and proves that nothing stored was lost or changed: the checksums of every image and
label file, and that no file appeared outside the studies folder. The README's "Faults and bad
input" table has one row per test here (checked by the last test).
"""

import hashlib
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lib.data.phantoms import DEMO_LABELS
from lib.datastore import CmfnetDatastore
from lib.errors import Conflict, InvalidInput
from lib.labels import LabelSet
from tests.conftest import ROOT, copy_of_demo, publish_untrained_model, running_server

K = len(DEMO_LABELS)
SCRIBBLED = "case_000"  # has stored scribbles in the demo datastore


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("faults"))
    with running_server(studies.parent, studies, {"auto_train": "false"}) as server:
        publish_untrained_model(server)
        yield server


def snapshot(studies: Path) -> dict[str, str]:
    """Checksums of every image and label file of the datastore (not MONAI Label's index or lock)."""
    return {
        str(path.relative_to(studies)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(studies.rglob("*"))
        if path.is_file() and not path.name.startswith(".") and path.name != "datastore_v2.json"
    }


def nothing_outside(server) -> bool:
    """No file named pwn* anywhere in the test's folder (the studies folder's parent and all below)."""
    return not [path for path in server.studies.parent.rglob("*pwn*")]


def new_case(server, tmp_path, image_id: str, source: str = "case_002") -> None:
    """A case of its own for a test that changes it: a copy of `source`'s CT and MR."""
    for folder in ("", "mr/"):
        shutil.copy(server.studies / f"{folder}{source}.nii.gz", tmp_path / f"{image_id}.nii.gz")
        params = {"params": json.dumps({"modality": "mr"})} if folder else {}
        response = put_image(server, image_id, tmp_path / f"{image_id}.nii.gz", **params)
        assert response.status_code == 200, response.text


def put_image(server, image_id: str, path: Path, **data):
    with open(path, "rb") as f:
        return server.http.put("/datastore/image", params={"image": image_id}, data=data, files={"file": f})


def put_label(server, image_id: str, path: Path, tag: str = "scribbles", **data):
    with open(path, "rb") as f:
        return server.http.put(
            "/datastore/label", params={"image": image_id, "tag": tag}, data=data, files={"label": f}
        )


def label_file(server, tmp_path, values: np.ndarray, image_id: str = SCRIBBLED, dtype=np.uint8) -> Path:
    ct = nib.load(server.studies / f"{image_id}.nii.gz")
    path = tmp_path / f"label_{image_id}.nii.gz"
    nib.save(nib.Nifti1Image(values.astype(dtype), ct.affine), path)
    return path


def strokes(server, image_id: str) -> np.ndarray:
    return np.zeros(nib.load(server.studies / f"{image_id}.nii.gz").shape, np.uint8)


def assert_refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


# -- ids and tags are names, never paths ----------------------------------------------------------


def test_image_id_that_is_a_path_is_refused(server, tmp_path):
    before = snapshot(server.studies)
    shutil.copy(server.studies / "case_002.nii.gz", tmp_path / "ct.nii.gz")
    assert_refused(put_image(server, "../pwn_img", tmp_path / "ct.nii.gz"), 422, "../pwn_img", "not a valid name")
    assert snapshot(server.studies) == before and nothing_outside(server)


def test_mr_upload_with_an_id_that_is_a_path_is_refused(server, tmp_path):
    before = snapshot(server.studies)
    shutil.copy(server.studies / "mr" / "case_002.nii.gz", tmp_path / "mr.nii.gz")
    response = put_image(server, "../../pwn_mr", tmp_path / "mr.nii.gz", params='{"modality": "mr"}')
    assert_refused(response, 422, "not a valid name")
    assert snapshot(server.studies) == before and nothing_outside(server)


def test_label_tag_that_is_a_path_is_refused(server, tmp_path):
    before = snapshot(server.studies)
    values = strokes(server, SCRIBBLED)
    values[10:20, 30, 20] = 1
    response = put_label(server, SCRIBBLED, label_file(server, tmp_path, values), tag="../../pwn_tag")
    assert_refused(response, 422, "tag", "not a valid name")
    assert snapshot(server.studies) == before and nothing_outside(server)


def test_reading_a_path_instead_of_an_image_id_is_refused(server):
    outside = server.studies.parent / "outside.nii.gz"  # a readable image outside the datastore
    shutil.copy(server.studies / "case_002.nii.gz", outside)
    for response in (
        server.http.post("/infer/cmfnet", params={"image": str(outside), "output": "json"}),
        server.http.post(
            "/infer/cmfnet", params={"output": "json"}, data={"params": json.dumps({"image": str(outside)})}
        ),
        server.http.get("/datastore/image", params={"image": "../outside"}),
    ):
        assert response.status_code == 422, response.text


def test_session_id_that_is_a_path_is_refused(server):
    """MONAI Label joins a session id into a folder path (reads `<sessions>/<id>/meta.info`, removes the folder)."""
    assert_refused(server.http.delete("/session/%2E%2E"), 422, "not a valid name")
    assert_refused(server.http.post("/infer/cmfnet", params={"session_id": "../..", "output": "json"}), 422)


def test_the_datastore_itself_refuses_paths(server, tmp_path):
    """Not only routes: any caller of the datastore (batch inference, training, a new route)."""
    studies = tmp_path / "studies"
    shutil.copytree(server.studies, studies, ignore=shutil.ignore_patterns(".lock", "datastore_v2.json"))
    datastore = CmfnetDatastore(str(studies), labels=LabelSet(DEMO_LABELS), companions=["mr"], auto_reload=False)
    label = label_file(server, tmp_path, strokes(server, SCRIBBLED))
    with pytest.raises(InvalidInput, match="not a valid name"):
        datastore.save_label(SCRIBBLED, str(label), "../../pwn_tag", {})
    with pytest.raises(InvalidInput, match="not a valid name"):
        datastore.add_image("../pwn_img", str(studies / "case_002.nii.gz"), {})
    with pytest.raises(InvalidInput, match="not a valid name"):
        datastore.add_image("../../pwn_mr", str(studies / "mr" / "case_002.nii.gz"), {"modality": "mr"})
    with pytest.raises(InvalidInput, match="not a valid name"):
        datastore.remove_image("../case_002")
    with pytest.raises(InvalidInput, match="not a valid name"):
        datastore.get_image_uri("/etc/passwd")
    assert not list(tmp_path.rglob("*pwn*"))


# -- annotations are append-only facts ------------------------------------------------------------


def test_batch_inference_into_the_scribbles_tag_is_refused(server):
    before = snapshot(server.studies)
    for run_sync in (False, True):
        response = server.http.post(
            "/batch/infer/cmfnet", params={"run_sync": run_sync}, json={"label_tag": "scribbles"}
        )
        assert_refused(response, 409, "scribbles", "human annotations")
    assert snapshot(server.studies) == before


def test_inference_into_a_tag_holding_human_labels_is_refused(server, tmp_path):
    values = strokes(server, "case_001")
    values[30:40, 30:40, 20] = DEMO_LABELS["liver"]
    assert (
        put_label(server, "case_001", label_file(server, tmp_path, values, "case_001"), tag="reviewed").status_code
        == 200
    )
    before = snapshot(server.studies)
    for tag in ("final", "scribbles", "reviewed"):
        params = {"save_label": True, "label_tag": tag}
        response = server.http.post("/infer/cmfnet?image=case_002&output=json", data={"params": json.dumps(params)})
        assert_refused(response, 409, tag, "human annotations")
        response = server.http.post("/batch/infer/cmfnet", json={"label_tag": tag})
        assert_refused(response, 409, tag)
    assert snapshot(server.studies) == before


def test_the_datastore_itself_refuses_model_output_on_human_labels(server, tmp_path):
    """The batch task runs in a subprocess and saves through the datastore: it refuses there too."""
    studies = tmp_path / "studies"
    shutil.copytree(server.studies, studies, ignore=shutil.ignore_patterns(".lock", "datastore_v2.json"))
    datastore = CmfnetDatastore(str(studies), labels=LabelSet(DEMO_LABELS), companions=["mr"], auto_reload=False)
    before = snapshot(studies)
    prediction = label_file(server, tmp_path, np.ones(strokes(server, SCRIBBLED).shape))
    with pytest.raises(Conflict, match="human annotations"):
        datastore.save_label(SCRIBBLED, str(prediction), "scribbles", {"model": "cmfnet", "params": {}})
    assert snapshot(studies) == before
    datastore.save_label(SCRIBBLED, str(prediction), "original", {"model": "cmfnet", "params": {}})
    datastore.save_label(SCRIBBLED, str(prediction), "original", {"model": "cmfnet", "params": {}})  # model over model


def test_label_with_fractional_values_is_refused_not_rounded(server, tmp_path):
    before = snapshot(server.studies)
    values = strokes(server, SCRIBBLED).astype(np.float32)
    values[10:20, 30, 20] = 1.4  # would round to a liver stroke
    path = label_file(server, tmp_path, values, dtype=np.float32)
    for tag in ("scribbles", "final"):
        assert_refused(put_label(server, SCRIBBLED, path, tag=tag), 422, "not whole numbers", "1.4")
    assert snapshot(server.studies) == before


def test_replacing_a_labelled_image_with_another_grid_is_refused_unless_labels_are_dropped(server, tmp_path):
    new_case(server, tmp_path, "regrid")
    values = strokes(server, "regrid")
    values[10:20, 30, 20] = 1
    assert put_label(server, "regrid", label_file(server, tmp_path, values, "regrid")).status_code == 200
    ct = nib.load(server.studies / "regrid.nii.gz")
    other_grid = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[::2, ::2], ct.affine @ np.diag([2, 2, 1, 1])), other_grid)
    same_grid = tmp_path / "same_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj) + 1, ct.affine), same_grid)
    before = snapshot(server.studies)

    assert_refused(put_image(server, "regrid", other_grid), 409, "labels ['scribbles']", "drop_labels")
    assert snapshot(server.studies) == before

    assert put_image(server, "regrid", same_grid).status_code == 200  # the labels still fit: kept
    assert snapshot(server.studies)["labels/scribbles/regrid.nii.gz"] == before["labels/scribbles/regrid.nii.gz"]

    assert put_image(server, "regrid", other_grid, params='{"drop_labels": true}').status_code == 200
    assert not (server.studies / "labels" / "scribbles" / "regrid.nii.gz").exists()
    assert nib.load(server.studies / "regrid.nii.gz").shape == nib.load(other_grid).shape


def test_deleting_a_case_deletes_its_mr_and_labels(server, tmp_path):
    new_case(server, tmp_path, "doomed")
    values = strokes(server, "doomed")
    values[10:20, 30, 20] = 1
    assert put_label(server, "doomed", label_file(server, tmp_path, values, "doomed")).status_code == 200
    assert server.http.delete("/datastore/image", params={"id": "doomed"}).status_code == 200
    assert not [path for path in server.studies.rglob("doomed*")]

    shutil.copy(server.studies / "case_002.nii.gz", tmp_path / "doomed.nii.gz")
    response = put_image(server, "doomed", tmp_path / "doomed.nii.gz")
    assert response.status_code == 200, response.text
    result = server.http.post("/infer/cmfnet?image=doomed&output=json").json()
    assert result["modalities_missing"] == ["mr"], "a new case with the same id has no MR of the old one"

    # at once, not when MONAI Label's file watcher gets to it (which may be after the next request)
    studies = tmp_path / "studies"
    shutil.copytree(server.studies, studies, ignore=shutil.ignore_patterns(".lock", "datastore_v2.json"))
    datastore = CmfnetDatastore(str(studies), labels=LabelSet(DEMO_LABELS), companions=["mr"], auto_reload=True)
    try:
        datastore.remove_image(SCRIBBLED)
        assert SCRIBBLED not in datastore.list_images() and not datastore.get_labels_by_image_id(SCRIBBLED)
    finally:
        datastore._observer.stop()  # its file watcher (MONAI Label has no public way to stop it)


def test_the_catalogue_survives_uploads_and_deletes_racing_its_file_watcher(tmp_path):
    """MONAI Label's catalogue is a dict its file watcher reconciles from a thread of its own."""
    studies = tmp_path / "studies"
    studies.mkdir()
    image = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), image)
    for i in range(50):  # a long catalogue: each reconciliation walks it, checking every file
        shutil.copy(image, studies / f"case_{i:03d}.nii.gz")
    datastore = CmfnetDatastore(str(studies), labels=LabelSet(DEMO_LABELS), companions=["mr"], auto_reload=True)
    errors, stop = [], threading.Event()

    def reconcile():  # as the watcher does after every file event, nearly all the time
        while not stop.is_set():
            try:
                datastore.refresh()
            except Exception as error:  # noqa: BLE001 - any error here is the failure under test
                errors.append(error)
            # a lock is not fair: without a pause, this thread takes it back at once and the uploads wait
            # for it for minutes
            stop.wait(0.001)

    watcher = threading.Thread(target=reconcile)
    watcher.start()
    try:
        for i in range(15):
            datastore.add_image(f"race_{i}", str(image), {})
            datastore.remove_image(f"race_{i}")
    finally:
        stop.set()
        watcher.join()
        datastore._observer.stop()
    assert not errors, errors
    assert not [i for i in datastore.list_images() if i.startswith("race_")]


# -- every bad request is a 4xx with a message ----------------------------------------------------


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"], ids=["malformed", "not-an-object"])
def test_params_that_are_not_a_json_object_are_refused(server, tmp_path, text):
    before = snapshot(server.studies)
    shutil.copy(server.studies / "case_002.nii.gz", tmp_path / "new.nii.gz")
    values = strokes(server, SCRIBBLED)
    values[10:20, 30, 20] = 1
    for response in (
        server.http.post("/infer/cmfnet?image=case_002", data={"params": text}),
        put_label(server, SCRIBBLED, label_file(server, tmp_path, values), params=text),
        put_image(server, "new_case", tmp_path / "new.nii.gz", params=text),
        server.http.put("/datastore/image/info", params={"image": SCRIBBLED}, data={"info": text}),
    ):
        assert_refused(response, 422, "JSON")
    assert snapshot(server.studies) == before


def test_unknown_model_strategy_or_scoring_method_is_404(server):
    for response in (
        server.http.post("/infer/no_such_model?image=case_002"),
        server.http.post("/batch/infer/no_such_model", json={}),
    ):
        assert_refused(response, 404, "no_such_model", "cmfnet")
    assert_refused(server.http.post("/activelearning/no_such_strategy", json={}), 404, "random")
    assert_refused(server.http.post("/scoring/no_such_method", json={}), 404, "no_such_method")
    assert server.http.get("/scoring/").status_code == 404, "no scoring task was started"


def test_inference_without_an_image_or_with_an_impossible_output_is_422(server):
    assert_refused(server.http.post("/infer/cmfnet"), 422, "?image=ID")
    assert_refused(server.http.post("/infer/cmfnet?image=case_002&output=dicom_seg"), 422, "DICOMweb")


def test_updating_the_info_of_an_unknown_image_or_label_is_404(server):
    before = snapshot(server.studies)
    info = {"info": json.dumps({"note": "x"})}
    response = server.http.put("/datastore/image/info", params={"image": "no_such_case"}, data=info)
    assert_refused(response, 404, "no_such_case")
    response = server.http.put("/datastore/label/info", params={"label": "case_002", "tag": "final"}, data=info)
    assert_refused(response, 404, "case_002")
    assert snapshot(server.studies) == before


def test_bad_segment_id_in_label_info_is_refused(server, tmp_path):
    before = snapshot(server.studies)
    values = strokes(server, SCRIBBLED)
    values[10:20, 30, 20] = 1
    for label_info in ([{"name": "foreground_scribbles", "id": "one"}], [{"name": "foreground_scribbles"}], {"id": 1}):
        params = {"label_info": label_info, "selected_label_name": "liver"}
        with open(label_file(server, tmp_path, values), "rb") as f:
            response = server.http.post(
                f"/infer/cmfnet_scribbles?image={SCRIBBLED}",
                data={"params": json.dumps(params)},
                files={"label": ("strokes.nii.gz", f)},
            )
        assert_refused(response, 422, "label_info")
    assert snapshot(server.studies) == before


def test_deleting_an_unknown_image_or_label_is_404(server):
    before = snapshot(server.studies)
    assert_refused(server.http.delete("/datastore/image", params={"id": "no_such_case"}), 404, "no_such_case")
    assert_refused(server.http.delete("/datastore/label", params={"id": "case_002", "tag": "nothing"}), 404, "nothing")
    assert snapshot(server.studies) == before


def test_cross_origin_requests_get_no_grant_by_default(server):
    response = server.http.get("/info/", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = server.http.options(
        "/datastore/label", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_make_serve_listens_on_this_machine_only():
    def serve_command(*variables: str) -> str:
        run = subprocess.run(["make", "-n", "serve", *variables], cwd=ROOT, capture_output=True, text=True, check=True)
        return next(line for line in run.stdout.splitlines() if "start_server" in line)

    assert "--host 127.0.0.1 " in serve_command()
    assert "--host 0.0.0.0 " in serve_command("HOST=0.0.0.0")


def test_train_parameters_out_of_bounds_or_unknown_are_refused_before_a_run(server):
    for params, words in [
        ({"max_steps": -1}, ("max_steps", "greater than or equal to 1")),
        ({"max_minutes": 1e9}, ("max_minutes", "less than or equal to")),
        ({"max_epochs": 3}, ("max_epochs", "Extra inputs")),
        ({"loss": {"affinty": 1}}, ("loss.affinty",)),
        ({"learning_rate": "fast"}, ("learning_rate",)),
    ]:
        assert_refused(server.http.post("/train/cmfnet", json=params), 422, *words)
    assert_refused(server.http.post("/train/", json={"cmfnet": {"val_every": 0}}), 422, "val_every")
    assert_refused(server.http.post("/train/nope", json={}), 404, "trainer")
    started = server.http.get("/train/", params={"all": True})
    assert started.status_code == 404 or started.json() == [], "no run was started"


def test_a_corrupt_published_model_is_moved_aside_and_the_previous_one_served(server):
    publish_untrained_model(server)
    publish_untrained_model(server)  # the first one is kept as cmfnet.pt.previous
    previous = (server.model_file.parent / "cmfnet.pt.previous").read_bytes()
    server.model_file.write_bytes(server.model_file.read_bytes()[:4096])  # a half-written file
    response = server.http.post("/infer/cmfnet?image=case_001&output=json")
    assert response.status_code == 200, response.text
    assert server.model_file.read_bytes() == previous
    assert len(list(server.model_file.parent.glob("cmfnet.pt.corrupt-*"))) >= 1

    # weights that do not fit this version's network (a model from an older version): the same
    publish_untrained_model(server)
    checkpoint = torch.load(server.model_file, weights_only=True)
    head = next(name for name in checkpoint["model"] if name.startswith("heads."))
    checkpoint["model"][head] = torch.zeros(1)
    torch.save(checkpoint, server.model_file)
    response = server.http.post("/infer/cmfnet?image=case_001&output=json")
    assert response.status_code == 200, response.text
    assert server.model_file.read_bytes() == previous
    assert len(list(server.model_file.parent.glob("cmfnet.pt.corrupt-*"))) >= 2


def test_a_corrupt_model_without_an_earlier_one_is_a_409_after_a_restart_until_a_retrain(demo, tmp_path):
    studies = copy_of_demo(demo, tmp_path)
    model = tmp_path / "app" / "model" / "cmfnet.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not a model")
    with running_server(tmp_path, studies, {"auto_train": "false"}) as server:
        assert_refused(server.http.post("/infer/cmfnet?image=case_001&output=json"), 409, "retrain")
        task = server.train({"max_steps": 2, "val_every": 2})  # training starts from scratch
        assert task["status"] == "DONE"
        assert server.http.post("/infer/cmfnet?image=case_001&output=json").status_code == 200


def test_a_retrain_queued_during_a_run_survives_a_restart_and_starts_at_once(demo, tmp_path):
    studies = copy_of_demo(demo, tmp_path)
    conf = {"auto_train_delay": "0", "max_steps": "200", "val_every": "100"}
    with running_server(tmp_path, studies, conf) as first:
        deadline = time.monotonic() + 120
        while first.http.get("/train/", params={"check_if_running": True}).status_code != 200:
            assert time.monotonic() < deadline, "the demo's scribbles did not start a run"
            time.sleep(0.5)
        ct = nib.load(studies / "case_002.nii.gz")
        values = np.zeros(ct.shape, np.uint8)
        values[40:50, 40, 20] = DEMO_LABELS["liver"]
        response = put_label(first, "case_002", label_file(first, tmp_path, values, "case_002"))
        assert response.status_code == 200, response.text
        assert (first.app_dir / "model" / "cmfnet.pending").exists()
    # the server stopped (and its run with it) before the queued retrain could start; after the restart it
    # starts without waiting for further saves (an hour's delay here)
    with running_server(tmp_path, studies, {**conf, "auto_train_delay": "3600"}) as second:
        deadline = time.monotonic() + 120
        while second.http.get("/train/", params={"all": True}).status_code != 200:
            assert time.monotonic() < deadline, "the queued retrain did not start after the restart"
            time.sleep(0.5)
        assert not (second.app_dir / "model" / "cmfnet.pending").exists()
        second.http.delete("/train/")


def test_server_keeps_serving_and_every_case_is_intact(server, demo):
    assert server.http.get("/info/").status_code == 200
    for image_id in ("case_000", "case_001", "case_002"):
        original = (demo / "studies" / f"{image_id}.nii.gz").read_bytes()
        assert (server.studies / f"{image_id}.nii.gz").read_bytes() == original
    stored = (server.studies / "labels" / "scribbles" / f"{SCRIBBLED}.nii.gz").read_bytes()
    assert stored == (demo / "studies" / "labels" / "scribbles" / f"{SCRIBBLED}.nii.gz").read_bytes()


def test_readme_fault_table_has_a_row_for_every_test_here():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Faults and bad input") :]
    tests = re.findall(r"^def (test_\w+)", Path(__file__).read_text(), re.MULTILINE)
    tests.remove("test_readme_fault_table_has_a_row_for_every_test_here")
    missing = [name for name in tests if f"`{name}`" not in table]
    assert not missing, f"README fault table lacks rows for {missing}"
