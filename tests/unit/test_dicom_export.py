"""The phantom DICOM export: read back by ITK (as MONAI Label reads a series), same volume in the same place."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage

from lib.data.dicom_export import CT_INTERCEPT, export_phantom
from lib.data.phantoms import make_case


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom")
    return export_phantom(3, "case_003", out), make_case(3), out


def read_series(folder, tmp_path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    path = tmp_path / f"{folder.name}.nii.gz"
    sitk.WriteImage(reader.Execute(), str(path))
    return LoadImage(image_only=True)(str(path))


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_series_reads_back_with_the_phantom_geometry_and_values(exported, modality, tmp_path):
    info, phantom, out = exported
    volume, affine = (phantom.ct, phantom.ct_affine) if modality == "CT" else (phantom.mr, phantom.mr_affine)
    image = read_series(out / "case_003" / modality, tmp_path)
    assert tuple(image.shape) == volume.shape
    np.testing.assert_allclose(image.affine.numpy(), affine, atol=1e-3)  # LPS in DICOM, RAS in NIfTI
    expected = np.maximum(np.rint(volume), CT_INTERCEPT) if modality == "CT" else volume
    np.testing.assert_allclose(image.numpy(), expected, atol=0.51)


def test_series_share_study_patient_and_frame_of_reference(exported):
    info, _, out = exported
    ct, mr = (pydicom.dcmread(next((out / "case_003" / m).glob("*.dcm"))) for m in ("CT", "MR"))
    assert ct.StudyInstanceUID == mr.StudyInstanceUID == info["StudyInstanceUID"]
    assert ct.PatientID == mr.PatientID == "case_003"
    assert ct.FrameOfReferenceUID == mr.FrameOfReferenceUID
    assert (ct.SeriesInstanceUID, mr.SeriesInstanceUID) == (info["CT"], info["MR"])
    assert (ct.Modality, ct.RescaleIntercept, mr.Modality) == ("CT", CT_INTERCEPT, "MR")
    assert ct.SeriesNumber < mr.SeriesNumber  # viewers show the CT first
