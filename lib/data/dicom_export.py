"""Write volumes as DICOM series, and the demo phantoms as one CT + one MR series per study.

A volume is a (X, Y, Z) array with its NIfTI affine (voxel -> world, RAS mm). DICOM's
patient coordinates are LPS, so the affine is flipped in x and y first. Each slice k
becomes one instance whose pixel array is `volume[:, :, k].T` (DICOM rows follow the
second voxel axis, columns the first), with

- ImageOrientationPatient: the unit directions of voxel axes 0 (along a row) and 1 (down a column),
- PixelSpacing: [spacing of axis 1 (between rows), spacing of axis 0 (between columns)],
- ImagePositionPatient: the LPS position of voxel (0, 0, k),
- SliceThickness and SpacingBetweenSlices: the spacing of axis 2.

The CT is stored as unsigned 16-bit with RescaleIntercept -1024 (HU = stored - 1024), the
MR as unsigned 16-bit without rescale. The series of one case share the study, patient and
FrameOfReferenceUID (they are co-registered in scanner space). UIDs derive from the case
id, so exporting the same case twice gives the same UIDs.

    python -m lib.data.dicom_export --out dicom_data --cases 2 [--stow http://127.0.0.1:8042/dicom-web]
"""

import argparse
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lib.data.phantoms import make_case

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_INTERCEPT = -1024.0
SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}


@dataclass(frozen=True)
class Study:
    """What the series of one study share."""

    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    date: str = "20250101"

    @classmethod
    def for_case(cls, case_id: str) -> "Study":
        return cls(
            patient_id=case_id,
            study_uid=generate_uid(entropy_srcs=[case_id, "study"]),
            frame_of_reference_uid=generate_uid(entropy_srcs=[case_id, "frame-of-reference"]),
        )


def geometry(affine: np.ndarray) -> dict:
    """DICOM geometry of a RAS voxel -> world affine: orientation, spacings, origin in LPS."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    directions = axes / spacing
    return {
        "orientation": [*directions[:, 0], *directions[:, 1]],
        "pixel_spacing": [spacing[1], spacing[0]],
        "slice_spacing": spacing[2],
        "slice_step": axes[:, 2],
        "origin": lps[:3, 3],
    }


def stored_values(volume: np.ndarray, modality: str) -> tuple[np.ndarray, float]:
    """Unsigned 16-bit stored values and the RescaleIntercept that maps them back."""
    intercept = CT_INTERCEPT if modality == "CT" else 0.0
    stored = np.clip(np.rint(np.asarray(volume, dtype=np.float64) - intercept), 0, np.iinfo(np.uint16).max)
    return stored.astype(np.uint16), intercept


def window(volume: np.ndarray, modality: str) -> tuple[float, float]:
    """A display window (centre, width): soft tissue for CT, the 1-99th percentiles otherwise."""
    if modality == "CT":
        return 40.0, 400.0
    low, high = np.percentile(volume, [1, 99])
    return float((low + high) / 2), float(max(high - low, 1.0))


def write_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: Path,
    study: Study,
    modality: str,
    series_number: int,
    description: str,
) -> list[Path]:
    """Write `volume` as one DICOM series (one file per slice) into `out_dir`; returns the files."""
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASSES)}, got {modality!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    geo = geometry(affine)
    stored, intercept = stored_values(volume, modality)
    center, width = window(volume, modality)
    series_uid = generate_uid(entropy_srcs=[study.study_uid, modality, str(series_number)])
    files = []
    for k in range(volume.shape[2]):
        ds = _instance(study, modality, SOP_CLASSES[modality], series_uid, series_number, description)
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [float(v) for v in geo["origin"] + k * geo["slice_step"]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in geo["orientation"]]
        ds.PixelSpacing = [float(v) for v in geo["pixel_spacing"]]
        ds.SliceThickness = float(geo["slice_spacing"])
        ds.SpacingBetweenSlices = float(geo["slice_spacing"])
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = 1.0
        ds.WindowCenter, ds.WindowWidth = center, width
        pixels = np.ascontiguousarray(stored[:, :, k].T)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        path = out_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, write_like_original=False)
        files.append(path)
    return files


def _instance(study: Study, modality: str, sop_class: str, series_uid: str, number: int, description: str):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = f"Phantom^{study.patient_id}"
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyID = "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyDescription = "CmFNet paired CT/MR phantom"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.Modality = modality
    ds.Manufacturer = "CmFNet Label phantoms"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "ABDOMEN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def export_phantom(seed: int, case_id: str, out: Path) -> dict:
    """One phantom case as a study with a CT (series 1) and an MR (series 2); returns their UIDs and folders."""
    case = make_case(seed)
    study = Study.for_case(case_id)
    ct = write_series(case.ct, case.ct_affine, out / case_id / "CT", study, "CT", 1, "CT abdomen")
    mr = write_series(case.mr, case.mr_affine, out / case_id / "MR", study, "MR", 2, "MR T2")
    return {
        "case": case_id,
        "StudyInstanceUID": study.study_uid,
        "CT": str(pydicom.dcmread(ct[0], stop_before_pixels=True).SeriesInstanceUID),
        "MR": str(pydicom.dcmread(mr[0], stop_before_pixels=True).SeriesInstanceUID),
        "folder": str(out / case_id),
    }


def stow(url: str, files: list[Path]) -> None:
    """Store DICOM files in a DICOMweb server (STOW-RS), one series per request."""
    client = DICOMwebClient(url=url)
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    for paths in by_folder.values():
        client.store_instances([pydicom.dcmread(p) for p in paths])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("dicom_data"))
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="case i is the phantom of seed + i, as in lib.data.demo")
    parser.add_argument("--stow", metavar="URL", help="also store the series in this DICOMweb server")
    args = parser.parse_args(argv)

    started = datetime.datetime.now()
    cases = [export_phantom(args.seed + i, f"case_{i:03d}", args.out) for i in range(args.cases)]
    if args.stow:
        stow(args.stow, [path for case in cases for path in sorted(Path(case["folder"]).glob("*/*.dcm"))])
    print(json.dumps({"cases": cases, "seconds": (datetime.datetime.now() - started).total_seconds()}, indent=2))


if __name__ == "__main__":
    main()
