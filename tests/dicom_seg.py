"""DICOM SEG files for tests: a Label Map SEG as OHIF 3.13 stores it, and a binary one written by dcmqi."""

import datetime
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from monailabel.datastore.utils.convert import nifti_to_dicom_seg
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from lib.dicomweb.dcmqi import use_packaged_dcmqi
from lib.dicomweb.seg_reader import LABELMAP_SEG

STUDY_FIELDS = ["PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"]


def ct_series(folder: Path) -> list[pydicom.Dataset]:
    """A CT series' instances in slice order (k = InstanceNumber - 1, as lib.data.dicom_export writes them)."""
    return sorted((pydicom.dcmread(p) for p in Path(folder).glob("*.dcm")), key=lambda ds: int(ds.InstanceNumber))


def labelmap_seg(
    ct: list[pydicom.Dataset], segments: np.ndarray, labels: dict[int, str], description: str, rle: bool = True
) -> FileDataset:
    """A Label Map SEG (one frame per CT slice with a segment, pixel = segment number), RLE Lossless like OHIF's.

    `segments` is indexed like the CT's NIfTI, (i, j, k): frame k's pixels are `segments[:, :, k].T`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = LABELMAP_SEG
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    for field in STUDY_FIELDS:
        setattr(ds, field, ct[0].get(field, ""))
    ds.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    ds.SOPClassUID, ds.SOPInstanceUID = LABELMAP_SEG, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), "SEG", 100, 1
    ds.SeriesDescription = description
    now = datetime.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    ds.SegmentationType = "LABELMAP"
    referenced = [Dataset() for _ in ct]
    for item, instance in zip(referenced, ct, strict=True):
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = instance.SOPClassUID, instance.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedInstanceSequence = ct[0].SeriesInstanceUID, referenced
    ds.ReferencedSeriesSequence = [series]
    ds.SegmentSequence = [_segment(number, label) for number, label in labels.items()]
    shared, orientation, measures = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = ct[0].ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = ct[0].PixelSpacing, ct[0].SliceThickness
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    slices = [k for k in range(segments.shape[2]) if segments[:, :, k].any()]
    groups = []
    for k in slices:
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = ct[k].ImagePositionPatient
        group.PlanePositionSequence = [position]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(slices), ct[0].Rows, ct[0].Columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.stack([segments[:, :, k].T for k in slices]).astype(np.uint8).tobytes()
    if rle:
        ds.compress(RLELossless)
    return ds


def _segment(number: int, label: str) -> Dataset:
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel, segment.SegmentAlgorithmType = number, label, "MANUAL"
    return segment


def dcmqi_seg(ct_folder: Path, values: np.ndarray, affine: np.ndarray, names: list[str], description: str):
    """A binary SEG written by dcmqi (MONAI Label's writer): `names` for the label values present, in order."""
    use_packaged_dcmqi()
    with tempfile.TemporaryDirectory() as folder:
        label = Path(folder) / "label.nii.gz"
        nib.save(nib.Nifti1Image(values.astype(np.uint8), affine), label)
        info = [{"name": name} for name in names]
        info[0]["model_name"] = description
        return pydicom.dcmread(nifti_to_dicom_seg(str(ct_folder), str(label), info))
