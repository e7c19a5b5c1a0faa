"""MONAI Label's DICOMweb datastore, with each reference series' companion series.

Images are the series that MONAI_LABEL_DICOMWEB_SEARCH_FILTER lists (default
`{"Modality": "CT"}`); the image id is the SeriesInstanceUID. MONAI Label downloads a
series into its cache (`<cache>/<series uid>/*.dcm`) and converts it to
`<cache>/<series uid>.nii.gz`.

**Companion rule (DICOMweb).** The companion of modality `mr` of a reference series is a
series whose Modality is `MR` in the same study; if the study has none, in another study
of the same PatientID. Among several, the lowest SeriesNumber wins (then the lowest
SeriesInstanceUID), and the others are named in the log. The chosen series is downloaded
to `<cache>/mr/<its series uid>/` and converted to `<cache>/mr/<reference series uid>.nii.gz`,
which is the local companion rule applied to the cached reference file: the model loads
and resamples it onto the CT grid exactly as it does a local companion. A reference with
no companion series is served without it (the result says so). Delete the cache folder
to fetch again after the PACS changed.

Labels are checked and scribbles merged as in the local datastore (lib.datastore.ScribbleStore);
`scribbles` stay in the cache folder (`<cache>/labels/scribbles/`), not in the PACS. A `final`
label is stored in the PACS as a DICOM SEG (MONAI Label's own path, written by dcmqi); segment
names come from the app's labels when the client sends none.
"""

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.ext.gcp.session_utils import create_session_from_gcp_credentials
from dicomweb_client.session_utils import create_session_from_user_pass
from filelock import FileLock
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import dicom_to_nifti
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter, Retry

from lib.datastore import ScribbleStore
from lib.dicomweb.dcmqi import use_packaged_dcmqi
from lib.errors import InvalidInput, NotFound
from lib.labels import LabelSet
from lib.names import checked_names

logger = logging.getLogger(__name__)

SERIES_FIELDS = ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "PatientID"]


@checked_names
class CmfnetDicomWebDatastore(ScribbleStore, DICOMWebDatastore):
    def __init__(self, client: DICOMwebClient, labels: LabelSet, companions: list[str], **kwargs):
        if not kwargs.get("convert_to_nifti", True):
            raise ValueError(
                "MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI=false is not supported: CmFNet reads the reference "
                "series and its companions as NIfTI files in the cache"
            )
        self._init_scribble_store(labels, companions)
        super().__init__(client=client, **kwargs)
        # one download and conversion into the cache at a time, across the server's threads and its
        # training processes: MONAI Label converts a series whose folder merely exists, even half-downloaded
        self._cache_lock = FileLock(self.cache_folder / ".cache.lock")

    @property
    def client(self) -> DICOMwebClient:
        return self._client

    @property
    def cache_folder(self) -> Path:
        """The datastore's cache folder (`<cache>/<hash of the url>`)."""
        return Path(self._datastore_path)

    def has_image(self, image_id: str) -> bool:
        """Asked of the PACS: MONAI Label's `list_images` is cached (MONAI_LABEL_DICOMWEB_CACHE_EXPIRY, 2 h by
        default), so a series stored after it was listed would not be an image."""
        return bool(self._series({**self._search_filter, "SeriesInstanceUID": image_id}))

    def cached_images(self) -> list[str]:
        """The series in the local cache: every one downloaded, so every annotated one (whatever MONAI Label's
        cached listing of the PACS says)."""
        return LocalDatastore.list_images(self)

    def study_images(self, study_uid: str) -> list[str]:
        """The image ids (reference series) of a study."""
        return [str(s.SeriesInstanceUID) for s in self._series({**self._search_filter, "StudyInstanceUID": study_uid})]

    def get_image_uri(self, image_id: str) -> str:
        """The cached NIfTI of the series, its companions materialized beside it."""
        reference = Path(self._datastore.image_path()).resolve() / f"{image_id}.nii.gz"
        with self._cache_lock:
            if not reference.exists():
                self._check_is_image(image_id)
                converted = super().get_image_uri(image_id)
                if Path(converted).resolve() != reference:  # MONAI Label returns its temporary file the first time
                    os.unlink(converted)
            for modality in self.companions:
                self._materialize_companion(image_id, reference, modality)
        return str(reference)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """Without `image_id`, `label_id` is an image id, as in the local datastore: its cached label, if any.

        MONAI Label's DICOMweb datastore takes a `final` label id to be a SEG series to download
        (it passes `image_id` then); given an image id it would download the CT as a SEG and fail.
        """
        if label_tag == DefaultLabelTag.FINAL and not image_id:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        return super().get_label_uri(label_id, label_tag, image_id)

    def _write_label(self, image_id: str, values: np.ndarray, tag: str, label_info: dict[str, Any]) -> str:
        if tag == DefaultLabelTag.FINAL and not label_info.get("label_info"):
            label_info = {**label_info, "label_info": self.segment_info(values)}
        return super()._write_label(image_id, values, tag, label_info)

    def segment_info(self, values: np.ndarray) -> list[dict[str, str]]:
        """Names for MONAI Label's DICOM SEG writer: one per label value present, in increasing order."""
        names = {i: name for name, i in self.label_set.classes.items()}
        return [{"name": names.get(int(v), f"label {v}")} for v in np.unique(values) if v != 0]

    def _series(self, filters: dict[str, Any]) -> list[Dataset]:
        found = self._client.search_for_series(search_filters=filters, fields=SERIES_FIELDS)
        series = [Dataset.from_json(s) for s in found]
        # some servers ignore some filters: check those they answered with
        return [s for s in series if all(k not in s or str(s.get(k)) == str(v) for k, v in filters.items())]

    def _check_is_image(self, image_id: str) -> None:
        found = self._series({"SeriesInstanceUID": image_id})
        if not found:
            raise NotFound(f"no series '{image_id}' in the DICOMweb server {self._client.base_url}")
        wanted = self._search_filter.get("Modality")
        if wanted and str(found[0].get("Modality", "")) != wanted:
            raise InvalidInput(
                f"series '{image_id}' is {found[0].get('Modality', 'of unknown modality')}, not {wanted}: "
                f"segment the {wanted} series (its companions are found from it)"
            )

    def _materialize_companion(self, image_id: str, reference: Path, modality: str) -> None:
        target = reference.parent / modality / reference.name
        if target.exists():
            return
        series = self._find_companion(image_id, modality.upper())
        if series is None:
            logger.info(f"series {image_id}: no {modality.upper()} series in its study or patient")
            return
        series_uid = str(series.SeriesInstanceUID)
        folder = target.parent / series_uid
        target.parent.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir() or not any(folder.iterdir()):
            dicom_web_download_series(
                str(series.StudyInstanceUID), series_uid, str(folder), self._client, self._fetch_by_frame
            )
        partial = target.parent / f".{target.name}.{os.getpid()}.partial"
        shutil.move(dicom_to_nifti(str(folder)), partial)
        os.replace(partial, target)  # never a half-written companion under the rule's name
        logger.info(f"series {image_id}: {modality.upper()} companion is series {series_uid} -> {target}")

    def _find_companion(self, image_id: str, modality: str) -> Dataset | None:
        reference = self._series({"SeriesInstanceUID": image_id})[0]
        scopes = [{"StudyInstanceUID": str(reference.StudyInstanceUID)}]
        if reference.get("PatientID"):
            scopes.append({"PatientID": str(reference.PatientID)})
        for scope in scopes:
            candidates = sorted(self._series({**scope, "Modality": modality}), key=_series_order)
            if candidates:
                if len(candidates) > 1:
                    others = [str(c.SeriesInstanceUID) for c in candidates[1:]]
                    logger.warning(f"series {image_id}: several {modality} series ({scope}); not using {others}")
                return candidates[0]
        return None


def _series_order(series: Dataset) -> tuple[float, str]:
    number = series.get("SeriesNumber")
    return (float(number) if number not in (None, "") else float("inf"), str(series.SeriesInstanceUID))


def retry_dropped_connections(session: requests.Session) -> requests.Session:
    """Resend a request when the PACS drops a kept-alive connection as it is reused.

    Orthanc closes idle connections after one second by default, so a poll every second
    races it; requests itself never resends. Storing the same SEG instance twice is harmless.
    """
    retry = Retry(total=3, connect=3, read=2, status=0, allowed_methods=None, backoff_factor=0.2)
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(max_retries=retry))
    return session


def dicomweb_datastore(url: str, labels: LabelSet, companions: list[str]) -> CmfnetDicomWebDatastore:
    """The datastore for `--studies http(s)://...`, built from MONAI Label's settings like MONAI Label builds its own,
    with dcmqi taken from its pip package instead of downloaded."""
    use_packaged_dcmqi()
    if "googleapis.com" in url:
        client = DICOMwebClient(url=url, session=create_session_from_gcp_credentials())
    else:
        session = requests.Session()
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=url,
            session=retry_dropped_connections(session),
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
    cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return CmfnetDicomWebDatastore(
        client=client,
        labels=labels,
        companions=companions,
        search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        cache_path=cache_path or None,
        fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
    )
