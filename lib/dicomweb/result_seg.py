"""A model's segmentation of a CT series stored in the PACS as a new DICOM SEG series.

Written by MONAI Label's own SEG writer (dcmqi's itkimage2segimage, from the `dcmqi` package)
against the CT's cached DICOM files, and stored with STOW-RS. dcmqi gives every SEG new UIDs,
so a result is always a new series: it never replaces the annotator's SEG or an older result.
"""

import datetime
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from monailabel.datastore.utils.convert import nifti_to_dicom_seg
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm

RESULT_DESCRIPTION = "CmFNet result"


def result_description(model_mtime: float) -> str:
    """The SeriesDescription of a result: which model (by the time it was published) made it."""
    return f"{RESULT_DESCRIPTION} {datetime.datetime.fromtimestamp(model_mtime):%Y-%m-%d %H:%M:%S}"


def store_result_seg(datastore, image_id: str, label_file: str, description: str) -> str | None:
    """Store `label_file` (on the CT grid of `image_id`) as a SEG series named `description`; its series UID.

    None when the label is empty (a SEG needs a segment)."""
    values = np.asarray(nib.load(label_file).dataobj)
    segments = datastore.segment_info(values)
    if not segments:
        return None
    segments[0]["model_name"] = description  # MONAI Label's writer takes the SeriesDescription from here
    series_dir = Path(datastore.get_image_uri(image_id)).parent / image_id  # the CT's DICOM files in the cache
    seg_file = nifti_to_dicom_seg(str(series_dir), label_file, segments)
    try:
        return dicom_web_upload_dcm(seg_file, datastore.client)
    finally:
        os.unlink(seg_file)
