"""The scribble loop through a real server, driven the way 3D Slicer's MONAI Label module drives it.

Two servers: `server` never trains (what an annotator gets back, and what is stored; each test starts
from a case without strokes), `learning_server` retrains by itself (each test counts the runs it caused)."""

import shutil
import time

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from monailabel.client import MONAILabelClient
from monailabel.transform.writer import write_itk

from lib.data.phantoms import DEMO_LABELS
from lib.data.scribbles import ScribbleSettings, simulate_scribbles
from tests.conftest import copy_of_demo, publish_untrained_model, running_server

K = len(DEMO_LABELS)
BACKGROUND = K + 1
CASE = "case_002"


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    """The annotation side: no training and never a model; the datastore starts without any scribbles."""
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("strokes"))
    shutil.rmtree(studies / "labels" / "scribbles")
    with running_server(studies.parent, studies, {"auto_train": "false"}) as server:
        yield server


@pytest.fixture(scope="module")
def learning_server(demo, tmp_path_factory):
    """The learning side: auto-training on (4 steps per run, 1 s delay), no scribbles and no model at start."""
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("loop"))
    shutil.rmtree(studies / "labels" / "scribbles")
    conf = {"auto_train": "true", "auto_train_delay": "1", "max_steps": "4", "val_every": "2"}
    with running_server(studies.parent, studies, conf) as server:
        yield server


@pytest.fixture
def no_strokes(server):
    """CASE and case_001 without stored strokes when the test starts, whatever ran before."""
    for image_id in (CASE, "case_001"):
        response = server.http.delete("/datastore/label", params={"id": image_id, "tag": "scribbles"})
        assert response.status_code in (200, 404), response.text
    return server


@pytest.fixture(scope="module")
def truth(demo) -> np.ndarray:
    return np.asarray(nib.load(demo / "truth" / f"{CASE}.nii.gz").dataobj)


def slicer_labelmap(server, tmp_path, segments: dict[str, np.ndarray]) -> tuple[str, list[dict]]:
    """Write segments as Slicer exports them: one labelmap (NRRD) on the CT grid, positional ids."""
    ct = nib.load(server.studies / f"{CASE}.nii.gz")
    labelmap = np.zeros(ct.shape, np.uint8)
    label_info = []
    for index, (name, mask) in enumerate(segments.items(), start=1):
        labelmap[mask] = index  # later segments overwrite earlier ones, as in Slicer's export
        label_info.append({"name": name, "id": index})
    path = str(tmp_path / f"scribbles_{time.monotonic_ns()}.nrrd")
    write_itk(labelmap, path, ct.affine, np.uint8, compress=True)
    return path, label_info


def scribbles_request(server, tmp_path, segments, selected: str):
    path, label_info = slicer_labelmap(server, tmp_path, segments)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    params = {"label_info": label_info, "selected_label_name": selected, "roi": []}
    params.update({"result_extension": ".nrrd", "result_dtype": "uint8"})  # as Slicer asks
    result_file, result = client.infer("cmfnet_scribbles", CASE, params, label_in=path)
    mask = LoadImage(image_only=True)(result_file)
    return np.asarray(mask), mask.affine.numpy(), result


def stored_scribbles(server) -> np.ndarray:
    return np.asarray(nib.load(server.studies / "labels" / "scribbles" / f"{CASE}.nii.gz").dataobj)


def liver_strokes(truth, seed):
    scribbles = simulate_scribbles(truth, K, seed=seed, settings=ScribbleSettings(slice_fraction=0.3))
    return scribbles == DEMO_LABELS["liver"], scribbles == BACKGROUND


def test_info_lists_the_scribbles_task(server):
    assert server.http.get("/info/").json()["models"]["cmfnet_scribbles"]["type"] == "scribbles"


def first_strokes(server, truth, tmp_path):
    """Slicer's first request on CASE: liver and background strokes, with the segmentation Slicer got back."""
    foreground, background = liver_strokes(truth, seed=1)
    segments = {
        "liver": truth == DEMO_LABELS["liver"],
        "background_scribbles": background,
        "foreground_scribbles": foreground,
    }
    mask, affine, result = scribbles_request(server, tmp_path, segments, "liver")
    return foreground, background, mask, affine, result


def test_first_strokes_give_a_corrected_mask_at_once_and_are_stored(no_strokes, truth, tmp_path):
    server = no_strokes
    foreground, background, mask, affine, result = first_strokes(server, truth, tmp_path)
    liver = truth == DEMO_LABELS["liver"]

    ct = nib.load(server.studies / f"{CASE}.nii.gz")
    assert mask.shape == ct.shape
    np.testing.assert_allclose(affine, ct.affine, atol=1e-3)
    assert set(np.unique(mask)) <= {0, 1}
    assert mask[foreground].all() and not mask[background].any()
    dice = 2 * (mask.astype(bool) & liver).sum() / (mask.sum() + liver.sum())
    assert dice > 0.6, "neighbouring liver tissue follows the strokes"
    assert result["model_used"] is False and result["strokes_stored"] is True

    stored = stored_scribbles(server)
    expected = np.where(foreground, DEMO_LABELS["liver"], np.where(background, BACKGROUND, 0))
    np.testing.assert_array_equal(stored, expected)  # the "liver" segment itself is not a stroke


def test_second_request_adds_strokes_to_the_stored_ones(no_strokes, truth, tmp_path):
    server = no_strokes
    first_strokes(server, truth, tmp_path)
    before = stored_scribbles(server)
    scribbles = simulate_scribbles(truth, K, seed=2, settings=ScribbleSettings(slice_fraction=0.3))
    spleen = (scribbles == DEMO_LABELS["spleen"]) & (before == 0)
    mask, _, result = scribbles_request(server, tmp_path, {"foreground_scribbles": spleen}, "spleen")
    assert mask[spleen].all() and not mask[before == BACKGROUND].any()
    after = stored_scribbles(server)
    np.testing.assert_array_equal(after[before > 0], before[before > 0])
    assert (after[spleen] == DEMO_LABELS["spleen"]).all()
    assert result["stroke_voxels"][str(DEMO_LABELS["spleen"])] == spleen.sum()


def test_erase_segment_removes_stored_strokes(no_strokes, truth, tmp_path):
    server = no_strokes
    first_strokes(server, truth, tmp_path)
    before = stored_scribbles(server)
    mistake = np.zeros(before.shape, bool)
    z = np.argwhere(before == BACKGROUND)[0][2]
    mistake[..., z] = before[..., z] == BACKGROUND  # the background strokes of one slice
    scribbles_request(server, tmp_path, {"erase_scribbles": mistake}, "liver")
    after = stored_scribbles(server)
    assert not after[mistake].any()
    np.testing.assert_array_equal(after[~mistake], before[~mistake])


def test_ohif_label_with_background_strokes_is_stored_as_scribbles(no_strokes, tmp_path):
    server = no_strokes
    ct = nib.load(server.studies / "case_001.nii.gz")
    strokes = np.zeros(ct.shape, np.uint8)
    strokes[40:50, 40, 20] = DEMO_LABELS["liver"]
    strokes[5:15, 5, 20] = BACKGROUND
    path = tmp_path / "ohif.nii.gz"
    nib.save(nib.Nifti1Image(strokes, ct.affine), path)
    with path.open("rb") as f:
        response = server.http.put("/datastore/label", params={"image": "case_001"}, files={"label": f})
    assert response.status_code == 200, response.text
    assert not (server.studies / "labels" / "final" / "case_001.nii.gz").exists()
    stored = np.asarray(nib.load(server.studies / "labels" / "scribbles" / "case_001.nii.gz").dataobj)
    np.testing.assert_array_equal(stored, strokes)


# -- the learning side: runs start by themselves; each test counts only the runs it caused ----------


def test_training_starts_by_itself_and_publishes_a_model(learning_server, truth, tmp_path):
    server = learning_server
    server.wait_until_idle()
    runs_before = len(server.train_runs())
    for seed in (1, 2, 3):  # three requests in a row, as an annotator sends them
        foreground, background = liver_strokes(truth, seed=seed)
        segments = {"background_scribbles": background, "foreground_scribbles": foreground}
        scribbles_request(server, tmp_path, segments, "liver")
    runs_at_last_request = len(server.train_runs())
    deadline = time.monotonic() + 60
    while len(server.train_runs()) == runs_before:
        assert time.monotonic() < deadline, "no training run started after scribbles were stored"
        time.sleep(0.5)
    server.wait_until_idle()
    runs = server.train_runs()
    assert all(t["status"] == "DONE" for t in runs)
    assert len(runs) > runs_before
    # a run may start and end between two requests (it is short); after the last one, at most one more run
    assert len(runs) - runs_at_last_request <= 1, "strokes saved during a run start one run after it"
    assert server.model_file.exists()


def test_scribbles_use_the_model_once_published(learning_server, truth, tmp_path):
    server = learning_server
    server.wait_until_idle()
    if not server.model_file.exists():  # no run has published one yet: an untrained network will do
        publish_untrained_model(server)
    foreground, background = liver_strokes(truth, seed=3)
    segments = {"background_scribbles": background, "foreground_scribbles": foreground}
    mask, _, result = scribbles_request(server, tmp_path, segments, "liver")
    assert result["model_used"] is True
    assert mask[foreground].all() and not mask[background].any()
    server.wait_until_idle()


def test_two_quick_saves_during_a_run_cause_exactly_one_more_run(learning_server, truth, tmp_path):
    server = learning_server
    server.wait_until_idle()
    before_runs = len(server.train_runs())

    ct = nib.load(server.studies / f"{CASE}.nii.gz")
    path = tmp_path / "strokes.nii.gz"

    def save(seed):
        scribbles = simulate_scribbles(truth, K, seed=seed, settings=ScribbleSettings(slice_fraction=0.2))
        nib.save(nib.Nifti1Image(scribbles, ct.affine), path)
        with path.open("rb") as f:
            response = server.http.put(
                "/datastore/label", params={"image": CASE, "tag": "scribbles"}, files={"label": f}
            )
        assert response.status_code == 200, response.text

    save(4)
    deadline = time.monotonic() + 60
    while not any(t["status"] == "RUNNING" for t in server.train_runs()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    save(5)
    save(6)
    server.wait_until_idle()
    runs = server.train_runs()
    assert len(runs) == before_runs + 2
    assert all(run["status"] == "DONE" for run in runs)
    assert server.http.get("/info/").json()["train_stats"]["cmfnet"]["status"] == "done"
