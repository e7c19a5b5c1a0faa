"""Scribbles through the PACS (Orthanc): scribble SEGs in, retraining, result SEGs out; bad SEGs reported."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicomweb_client import DICOMwebClient

from lib.data.dicom_export import export_phantom, stow
from lib.data.phantoms import DEMO_LABELS, make_case
from lib.dicomweb.result_seg import result_description
from lib.dicomweb.seg_reader import read_segments, segment_labels
from tests.conftest import publish_untrained_model, running_server, wait_for
from tests.dicom_seg import ct_series, dcmqi_seg, labelmap_seg
from tests.orthanc import running_orthanc, seg_series

BACKGROUND = len(DEMO_LABELS) + 1


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with two CT + MR studies."""
    root = tmp_path_factory.mktemp("pacs_scribbles")
    with running_orthanc(root / "orthanc") as orthanc:
        cases = [export_phantom(seed, f"case_{seed:03d}", root / "dicom") for seed in (0, 1)]
        stow(orthanc.dicomweb, sorted((root / "dicom").glob("*/*/*.dcm")))
        yield orthanc, {case["case"]: case for case in cases}, root


@pytest.fixture(scope="module")
def server(pacs):
    """The app over Orthanc: polls for scribble SEGs every second, retrains (4 steps) 1 s after new strokes."""
    orthanc, _, root = pacs
    cache = root / "cache"
    # runs start from scratch, so each publishes at its first validation (a 4-step fine-tune need not
    # beat the published model)
    conf = {
        "max_steps": "4",
        "val_every": "2",
        "auto_train_delay": "1",
        "seg_poll_interval": "1",
        "pretrained": "false",
    }
    with running_server(
        root, orthanc.dicomweb, conf=conf, env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(cache)}
    ) as server:
        publish_untrained_model(server)
        server.cache = next(p for p in cache.iterdir() if p.is_dir())
        yield server


def scribbles_file(server, ct_uid: str) -> Path:
    return server.cache / "labels" / "scribbles" / f"{ct_uid}.nii.gz"


def stored_scribbles(server, ct_uid: str, shape) -> np.ndarray:
    """The case's stored strokes; none (zeros) before any test of this module stored some."""
    path = scribbles_file(server, ct_uid)
    return np.asarray(nib.load(path).dataobj) if path.exists() else np.zeros(shape, np.uint8)


def pacs_record(server, instance: str) -> dict | None:
    return next((r for r in server.http.get("/info/").json()["pacs"]["recent"] if r["instance"] == instance), None)


def strokes_on_truth(seed: int, slice_k: int) -> np.ndarray:
    """Strokes as an annotator paints them: short runs inside liver and spleen, and in the air (background)."""
    truth = make_case(seed).truth
    strokes = np.zeros(truth.shape, np.uint8)
    for name in ("liver", "spleen"):
        voxels = np.argwhere(truth[:, :, slice_k] == DEMO_LABELS[name])[:30]
        strokes[voxels[:, 0], voxels[:, 1], slice_k] = DEMO_LABELS[name]
    strokes[2:12, 3, slice_k] = BACKGROUND
    return strokes


def test_scribble_seg_is_imported_at_its_voxels_retrained_on_and_a_result_seg_comes_back(server, pacs):
    orthanc, cases, _ = pacs
    case = cases["case_000"]
    strokes = strokes_on_truth(0, 24)
    segments = {DEMO_LABELS["liver"]: 1, DEMO_LABELS["spleen"]: 2, BACKGROUND: 3}
    painted = np.vectorize(lambda v: segments.get(v, 0))(strokes)
    seg = labelmap_seg(
        ct_series(Path(case["folder"]) / "CT"), painted, {1: "liver", 2: "Spleen", 3: "background"}, "scribbles"
    )
    server.wait_until_idle()  # strokes stored by another test of this module start runs of their own
    model_before, runs_before = server.model_file.stat().st_mtime, len(server.train_runs())
    before = stored_scribbles(server, case["CT"], strokes.shape)
    DICOMwebClient(orthanc.dicomweb).store_instances([seg])

    record = wait_for(lambda: pacs_record(server, seg.SOPInstanceUID), 60, "the SEG imported")
    assert record["status"] == "imported" and record["image"] == case["CT"], record
    stored = stored_scribbles(server, case["CT"], strokes.shape)
    # class ids, K+1 for background, at the painted voxels; merged over strokes stored before
    np.testing.assert_array_equal(stored, np.where(strokes > 0, strokes, before))

    runs = server.wait_for_retraining(runs_before, settle=3, timeout=600)
    assert all(run["status"] == "DONE" for run in runs), runs
    assert server.model_file.stat().st_mtime > model_before, "the retrained model was published"
    description = result_description(server.model_file.stat().st_mtime)  # the retrained model's result
    result = wait_for(lambda: seg_series(orthanc, case["StudyInstanceUID"], description), 300, "its result SEG")
    assert result.ReferencedSeriesSequence[0].SeriesInstanceUID == case["CT"]
    assert result.SeriesInstanceUID != seg.SeriesInstanceUID
    names = segment_labels(result)
    assert set(names.values()) <= set(DEMO_LABELS)
    reference = nib.load(server.cache / f"{case['CT']}.nii.gz")
    shown = read_segments(result, reference.affine, reference.shape)
    label = np.asarray(server.infer_label(case["CT"]).dataobj)  # the same (latest) model's segmentation
    to_class = np.zeros(max(names) + 1, np.int64)
    for number, name in names.items():
        to_class[number] = DEMO_LABELS[name]
    np.testing.assert_array_equal(to_class[shown], label)

    # the annotator's SEG is still there, as it was; the result was not taken for scribbles
    [kept] = DICOMwebClient(orthanc.dicomweb).retrieve_series(case["StudyInstanceUID"], seg.SeriesInstanceUID)
    assert kept.SOPInstanceUID == seg.SOPInstanceUID and kept.pixel_array.tobytes() == seg.pixel_array.tobytes()
    assert pacs_record(server, result.SOPInstanceUID) is None


def test_the_same_seg_imported_twice_leaves_the_stored_scribbles_byte_identical(server, pacs):
    orthanc, cases, _ = pacs
    case = cases["case_001"]
    strokes = strokes_on_truth(1, 20)
    names = {DEMO_LABELS["liver"]: "liver", DEMO_LABELS["spleen"]: "spleen", BACKGROUND: "background"}
    values = sorted(v for v in np.unique(strokes) if v)
    seg = dcmqi_seg(
        Path(case["folder"]) / "CT", strokes, make_case(1).ct_affine, [names[v] for v in values], "Scribbles"
    )
    DICOMwebClient(orthanc.dicomweb).store_instances([seg])  # a binary SEG (dcmqi), not OHIF's label map

    first = server.http.post("/pacs/import", params={"study": case["StudyInstanceUID"]})
    assert first.status_code == 200, first.text
    assert {r["status"] for r in first.json() if r["instance"] == seg.SOPInstanceUID} <= {"imported", "unchanged"}
    path = scribbles_file(server, case["CT"])
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), strokes)
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns

    again = server.http.post("/pacs/import", params={"study": case["StudyInstanceUID"]})
    assert again.status_code == 200, again.text
    assert [r["status"] for r in again.json() if r["instance"] == seg.SOPInstanceUID] == ["unchanged"]
    assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime


def test_foreign_and_malformed_segs_are_reported_and_change_no_stored_scribble(server, pacs):
    orthanc, cases, _ = pacs
    case = cases["case_000"]
    ct = ct_series(Path(case["folder"]) / "CT")
    upload = server.cache.parent / "strokes.nii.gz"  # strokes already stored for the case
    nib.save(nib.Nifti1Image(strokes_on_truth(0, 30), make_case(0).ct_affine), upload)
    with upload.open("rb") as f:
        response = server.http.put(
            "/datastore/label", params={"image": case["CT"], "tag": "scribbles"}, files={"label": f}
        )
    assert response.status_code == 200, response.text
    before = {p.name: p.read_bytes() for p in scribbles_file(server, case["CT"]).parent.glob("*.nii.gz")}

    painted = np.zeros(make_case(0).ct.shape, np.uint8)
    painted[40:50, 40, 24] = 1
    mr = ct_series(Path(case["folder"]) / "MR")
    on_mr = np.zeros((mr[0].Columns, mr[0].Rows, len(mr)), np.uint8)
    on_mr[10:20, 10, 5] = 1
    on_the_mr = labelmap_seg(mr, on_mr, {1: "liver"}, "scribbles")
    unknown_segment = labelmap_seg(ct, painted, {1: "kidney"}, "scribbles")
    off_grid = labelmap_seg(ct, painted, {1: "liver"}, "scribbles", rle=False)
    off_grid.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[0] += (
        1.75  # half a voxel
    )
    truncated = labelmap_seg(ct, painted, {1: "liver"}, "scribbles", rle=False)
    truncated.PixelData = truncated.PixelData[:100]
    bad = {
        on_the_mr.SOPInstanceUID: "not a datastore image",
        unknown_segment.SOPInstanceUID: "match no class",
        off_grid.SOPInstanceUID: "not on the image's voxel grid",
        truncated.SOPInstanceUID: "pixel data cannot be decoded",
    }
    DICOMwebClient(orthanc.dicomweb).store_instances([on_the_mr, unknown_segment, off_grid, truncated])

    response = server.http.post("/pacs/import", params={"study": case["StudyInstanceUID"]})
    assert response.status_code == 200, response.text
    records = {r["instance"]: r for r in response.json()}
    for instance, reason in bad.items():
        assert records[instance]["status"] == "skipped" and reason in records[instance]["reason"], records[instance]
        assert pacs_record(server, instance)["status"] == "skipped"  # reported in /info
    assert {p.name: p.read_bytes() for p in scribbles_file(server, case["CT"]).parent.glob("*.nii.gz")} == before
    assert "skipped: the SEG references series" in server.log.read_text()


def test_results_on_request_are_new_seg_series(server, pacs):
    orthanc, cases, _ = pacs
    case = cases["case_001"]
    before = {s["0020000E"]["Value"][0] for s in orthanc.series(Modality="SEG")}
    response = server.http.post("/pacs/results", params={"study": case["StudyInstanceUID"]})
    assert response.status_code == 200, response.text
    [record] = response.json()
    assert record["image"] == case["CT"] and record["series"] not in before, record
    after = {s["0020000E"]["Value"][0] for s in orthanc.series(Modality="SEG")}
    # added, nothing replaced (a retrain started by another test's strokes may add its own results meanwhile)
    assert before | {record["series"]} <= after


def test_concurrent_imports_of_a_study_not_yet_cached_all_succeed(server, pacs):
    """The poll thread and several POSTs import the same SEG of a CT series the server has never downloaded;
    the retraining they start stores a result SEG for it too."""
    orthanc, _, root = pacs
    server.wait_until_idle()
    runs_before = len(server.train_runs())
    # the datastore's stats list the PACS's series, and MONAI Label keeps that list for 2 h
    assert server.http.get("/datastore/", params={"output": "stats"}).status_code == 200
    case = export_phantom(2, "case_002", root / "dicom")
    stow(orthanc.dicomweb, sorted((root / "dicom" / "case_002").glob("*/*.dcm")))
    strokes = strokes_on_truth(2, 24)
    names = {DEMO_LABELS["liver"]: "liver", DEMO_LABELS["spleen"]: "spleen", BACKGROUND: "background"}
    seg = labelmap_seg(ct_series(Path(case["folder"]) / "CT"), strokes, names, "scribbles")
    DICOMwebClient(orthanc.dicomweb).store_instances([seg])

    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: server.http.post("/pacs/import", params={"study": case["StudyInstanceUID"]}), range(4))
        )
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    records = [r for a in answers for r in a.json() if r["instance"] == seg.SOPInstanceUID]
    assert len(records) == 4 and {r["status"] for r in records} <= {"imported", "unchanged"}, records
    np.testing.assert_array_equal(np.asarray(nib.load(scribbles_file(server, case["CT"])).dataobj), strokes)

    server.wait_for_retraining(runs_before, settle=3, timeout=600)
    description = result_description(server.model_file.stat().st_mtime)
    wait_for(lambda: seg_series(orthanc, case["StudyInstanceUID"], description), 120, "the new study's result SEG")
