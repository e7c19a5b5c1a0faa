"""A DICOMweb round trip through a real Orthanc: CT + MR series in, inference, DICOM SEG back into the PACS."""

import gzip
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from monai.transforms import LoadImage
from monailabel.client import MONAILabelClient
from monailabel.transform.writer import write_itk

from lib.data.dicom_export import Study, export_phantom, stow, write_series
from lib.data.phantoms import DEMO_LABELS, make_case
from tests.conftest import publish_untrained_model, running_server
from tests.orthanc import running_orthanc

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with case 0 (CT + MR in one study) and case 1 (CT; its MR in another study of the patient)."""
    root = tmp_path_factory.mktemp("dicomweb")
    with running_orthanc(root / "orthanc") as orthanc:
        cases = [export_phantom(0, "case_000", root / "dicom"), export_phantom(1, "case_001", root / "dicom")]
        for mr in (root / "dicom" / "case_001" / "MR").glob("*.dcm"):  # case 1's MR goes to a study of its own
            mr.unlink()
        phantom = make_case(1)
        other_study = Study(patient_id="case_001", study_uid=pydicom.uid.generate_uid(), frame_of_reference_uid="1.2.3")
        write_series(phantom.mr, phantom.mr_affine, root / "dicom" / "case_001" / "MR", other_study, "MR", 1, "MR T2")
        stow(orthanc.dicomweb, sorted((root / "dicom").glob("*/*/*.dcm")))
        yield orthanc, {case["case"]: case for case in cases}, root


@pytest.fixture(scope="module")
def server(pacs):
    orthanc, _, root = pacs
    cache = root / "cache"
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(cache)}
    with running_server(root, orthanc.dicomweb, conf={"auto_train": "false"}, env=env) as server:
        publish_untrained_model(server)
        server.cache = next(p for p in cache.iterdir() if p.is_dir())  # MONAI Label's <cache>/<hash of the url>
        yield server


def ct_files(case: dict) -> list[pydicom.Dataset]:
    """The CT instances of a case, in slice order."""
    files = [pydicom.dcmread(p) for p in sorted((Path(case["folder"]) / "CT").glob("*.dcm"))]
    return sorted(files, key=lambda ds: int(ds.InstanceNumber))


def nifti_from_bytes(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content)


def seg_volume(seg: pydicom.Dataset, ct: list[pydicom.Dataset]) -> np.ndarray:
    """Check a DICOM SEG lies on the CT's grid and return it as a label volume indexed like the CT NIfTI (i, j, k)."""
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct[0].SeriesInstanceUID
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {ds.SOPInstanceUID for ds in ct}
    assert (seg.Rows, seg.Columns) == (ct[0].Rows, ct[0].Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in ct[0].ImageOrientationPatient],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing], [float(v) for v in ct[0].PixelSpacing]
    )
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ct])
    ids = {s.SegmentNumber: DEMO_LABELS[s.SegmentLabel] for s in seg.SegmentSequence}
    volume = np.zeros((ct[0].Columns, ct[0].Rows, len(ct)), np.uint8)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        distances = np.abs(positions - position).max(axis=1)
        assert distances.min() < 1e-3, f"SEG frame at {position} is on no CT slice"
        segment = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        volume[:, :, int(distances.argmin())][frame.T > 0] = ids[segment]
    return volume


def test_only_ct_series_are_datastore_images(server, pacs):
    _, cases, _ = pacs
    assert server.http.get("/info/").json()["datastore"]["total"] == 2
    sample = server.http.post("/activelearning/random", json={}).json()
    assert sample["id"] in {cases["case_000"]["CT"], cases["case_001"]["CT"]}


def test_infer_fetches_the_mr_companion_and_labels_on_the_ct_grid(server, pacs):
    _, cases, _ = pacs
    ct_uid = cases["case_000"]["CT"]
    response = server.http.post(f"/infer/cmfnet?image={ct_uid}&output=json")
    assert response.status_code == 200, response.text
    assert response.json()["modalities_used"] == ["ct", "mr"]

    phantom = make_case(0)
    reference = nib.load(server.cache / f"{ct_uid}.nii.gz")
    companion = nib.load(server.cache / "mr" / f"{ct_uid}.nii.gz")  # the local companion rule, in the cache
    np.testing.assert_allclose(reference.affine, phantom.ct_affine, atol=1e-3)  # DICOM LPS -> NIfTI RAS, both ways
    np.testing.assert_allclose(companion.affine, phantom.mr_affine, atol=1e-3)
    np.testing.assert_allclose(np.asarray(companion.dataobj), phantom.mr, atol=0.51)  # stored as integers

    label = nifti_from_bytes(server.http.post(f"/infer/cmfnet?image={ct_uid}&output=image").content)
    assert label.shape == phantom.ct.shape
    np.testing.assert_allclose(label.affine, phantom.ct_affine, atol=1e-3)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, *DEMO_LABELS.values()}


def test_mr_in_another_study_of_the_same_patient_is_the_companion(server, pacs):
    _, cases, _ = pacs
    response = server.http.post(f"/infer/cmfnet?image={cases['case_001']['CT']}&output=json")
    assert response.status_code == 200, response.text
    assert response.json()["modalities_used"] == ["ct", "mr"]


def test_dicom_seg_result_is_on_the_ct_grid_and_equals_the_label(server, pacs):
    _, cases, _ = pacs
    case = cases["case_000"]
    label = nifti_from_bytes(server.http.post(f"/infer/cmfnet?image={case['CT']}&output=image").content)
    expected = np.asarray(label.dataobj)
    # MONAI Label names the SEG's segments by position among the label values present, not by value
    names = {v: k for k, v in DEMO_LABELS.items()}
    label_info = [{"name": names[v]} for v in np.unique(expected).tolist() if v]

    params = {"params": json.dumps({"label_info": label_info})}
    response = server.http.post(f"/infer/cmfnet?image={case['CT']}&output=dicom_seg", data=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(response.content))
    assert seg.NumberOfFrames > 0
    np.testing.assert_array_equal(seg_volume(seg, ct_files(case)), expected)


def test_final_label_is_stored_in_the_pacs_as_dicom_seg(server, pacs, tmp_path):
    orthanc, cases, _ = pacs
    case = cases["case_000"]
    truth = np.zeros(make_case(0).ct.shape, np.uint8)
    truth[20:40, 30:50, 10:20] = DEMO_LABELS["spleen"]
    truth[50:70, 30:50, 25:30] = DEMO_LABELS["tumour"]
    upload = tmp_path / "final.nii.gz"
    nib.save(nib.Nifti1Image(truth, make_case(0).ct_affine), upload)
    seg_series_before = {s["0020000E"]["Value"][0] for s in orthanc.series(Modality="SEG")}

    with upload.open("rb") as f:
        response = server.http.put(
            "/datastore/label", params={"image": case["CT"], "tag": "final"}, files={"label": f}
        )  # no label_info: the segment names come from the app's labels
    assert response.status_code == 200, response.text

    [seg_uid] = {s["0020000E"]["Value"][0] for s in orthanc.series(Modality="SEG")} - seg_series_before
    [seg] = DICOMwebClient(orthanc.dicomweb).retrieve_series(case["StudyInstanceUID"], seg_uid)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["spleen", "tumour"]
    np.testing.assert_array_equal(seg_volume(seg, ct_files(case)), truth)


def slicer_scribbles(server, ct_uid: str, tmp_path, segments: dict[str, np.ndarray], selected: str):
    """A scribbles request as 3D Slicer sends it for a PACS series; the returned mask."""
    affine = nib.load(server.cache / f"{ct_uid}.nii.gz").affine
    labelmap = np.zeros(next(iter(segments.values())).shape, np.uint8)
    for index, mask in enumerate(segments.values(), start=1):
        labelmap[mask] = index
    path = str(tmp_path / f"scribbles_{selected}.nrrd")
    write_itk(labelmap, path, affine, np.uint8, compress=True)
    label_info = [{"name": name, "id": i} for i, name in enumerate(segments, start=1)]
    params = {"label_info": label_info, "selected_label_name": selected, "roi": [], "result_extension": ".nrrd"}
    result_file, result = MONAILabelClient(server.url, tmpdir=str(tmp_path)).infer(
        "cmfnet_scribbles", ct_uid, params, label_in=path
    )
    assert result["strokes_stored"] is True
    return np.asarray(LoadImage(image_only=True)(result_file))


def test_scribbles_on_a_pacs_series_are_merged_in_the_cache_and_honoured(server, pacs, tmp_path):
    _, cases, _ = pacs
    ct_uid = cases["case_001"]["CT"]
    server.http.get("/datastore/image", params={"image": ct_uid})  # fetched and converted into the cache
    truth = make_case(1).truth
    background = len(DEMO_LABELS) + 1
    liver, spleen = np.zeros(truth.shape, bool), np.zeros(truth.shape, bool)
    liver[tuple(np.argwhere(truth == DEMO_LABELS["liver"])[:40].T)] = True
    spleen[tuple(np.argwhere(truth == DEMO_LABELS["spleen"])[:40].T)] = True
    air = np.zeros(truth.shape, bool)
    air[:6, :6, :] = True
    scribbles = server.cache / "labels" / "scribbles" / f"{ct_uid}.nii.gz"
    # another test of this module may have stored strokes on the case before; they stay where not painted over
    expected = np.asarray(nib.load(scribbles).dataobj).copy() if scribbles.exists() else np.zeros(truth.shape, np.uint8)

    mask = slicer_scribbles(
        server, ct_uid, tmp_path, {"foreground_scribbles": liver, "background_scribbles": air}, "liver"
    )
    assert mask.shape == truth.shape and mask[liver].all() and not mask[air].any()
    slicer_scribbles(server, ct_uid, tmp_path, {"foreground_scribbles": spleen}, "spleen")

    stored = np.asarray(nib.load(scribbles).dataobj)
    expected[air], expected[liver], expected[spleen] = background, DEMO_LABELS["liver"], DEMO_LABELS["spleen"]
    np.testing.assert_array_equal(stored, expected)  # both requests' strokes, none in the PACS


def test_ohif_binary_label_with_background_strokes_stays_out_of_the_pacs(server, pacs):
    orthanc, cases, _ = pacs
    ct_uid = cases["case_001"]["CT"]
    seg_series_before = len(orthanc.series(Modality="SEG"))
    scribbles = server.cache / "labels" / "scribbles" / f"{ct_uid}.nii.gz"
    strokes = np.zeros(make_case(1).truth.shape, np.uint8)
    # another test of this module may have stored strokes on the case before
    stored_before = np.asarray(nib.load(scribbles).dataobj) if scribbles.exists() else np.zeros_like(strokes)
    strokes[40:50, 40, 20] = DEMO_LABELS["tumour"]
    strokes[0, 0:10, 0] = len(DEMO_LABELS) + 1
    # OHIF sends the voxels as raw bytes in the image's (Fortran) order
    response = server.http.put(
        "/datastore/label",
        params={"image": ct_uid, "tag": "final"},
        files={"label": ("label.bin", strokes.tobytes(order="F"))},
    )
    assert response.status_code == 200, response.text
    assert len(orthanc.series(Modality="SEG")) == seg_series_before
    stored = np.asarray(nib.load(scribbles).dataobj)
    np.testing.assert_array_equal(stored, np.where(strokes > 0, strokes, stored_before))

    wrong_size = server.http.put(
        "/datastore/label", params={"image": ct_uid, "tag": "final"}, files={"label": ("label.bin", b"\x01" * 10)}
    )
    assert wrong_size.status_code == 422 and "does not fit the image" in wrong_size.json()["detail"]


def test_batch_inference_over_the_pacs_labels_every_ct_series(server, pacs):
    _, cases, _ = pacs
    response = server.http.post(
        "/batch/infer/cmfnet", params={"images": "all", "run_sync": True}, json={"label_tag": "batch"}
    )
    assert response.status_code == 200, response.text
    results = response.json()
    assert set(results) == {cases["case_000"]["CT"], cases["case_001"]["CT"]}
    for seed, case in enumerate(cases.values()):
        assert results[case["CT"]]["params"]["modalities_used"] == ["ct", "mr"]
        label, phantom = nib.load(server.cache / "labels" / "batch" / f"{case['CT']}.nii.gz"), make_case(seed)
        assert label.shape == phantom.ct.shape
        np.testing.assert_allclose(label.affine, phantom.ct_affine, atol=1e-3)


def test_unknown_series_is_404_and_an_mr_series_is_refused(server, pacs):
    _, cases, _ = pacs
    assert server.http.post("/infer/cmfnet?image=1.2.3.4&output=json").status_code == 404
    response = server.http.post(f"/infer/cmfnet?image={cases['case_000']['MR']}&output=json")
    assert response.status_code == 422
    assert "is MR, not CT" in response.json()["detail"]
