"""The checks and scribble handling this app needs, on MONAI Label's datastores.

:class:`ScribbleStore` (for the local datastore here and the DICOMweb one in lib.dicomweb):

- Uploaded labels are read and checked before anything is stored, so a corrupt or mismatched
  upload never replaces good data: a label must have the image's shape and affine, and values
  in 0..K (`final`) or 0..K+1 (`scribbles`). OHIF's raw `.bin` masks are read on the image's grid.
- Scribbles are merged into what is stored (new strokes win where they overlap), never
  silently replaced; `{"replace": true}` in the save params replaces them on purpose.
- A label sent as `final` that holds background strokes (K+1, as OHIF can send) is stored
  as scribbles: a mask with strokes in it is not dense supervision.

:class:`CmfnetDatastore` (local folders) also:

- answers unknown image ids with a 404, not an empty path that fails later;
- reads uploaded images before storing them, and with params `{"modality": "mr"}` stores
  `PUT /datastore/image?image=ID` as the MR companion of case ID (`<studies>/mr/ID.<ext>`).
"""

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image

from lib.errors import InvalidInput, NotFound
from lib.labels import LabelSet
from lib.transforms.modalities import load_volume

logger = logging.getLogger(__name__)

SCRIBBLES_TAG = "scribbles"
# Affines may differ by float rounding between writers (ITK, nibabel, Slicer); in mm.
AFFINE_TOLERANCE = 1e-2


class ScribbleStore:
    """Label checks and scribble merging for a MONAI Label datastore class (put it first in the bases)."""

    label_set: LabelSet

    def _init_scribble_store(self, labels: LabelSet, companions: list[str]) -> None:
        self.label_set = labels
        self.companions = list(companions)
        self._merge_lock = threading.Lock()

    def has_image(self, image_id: str) -> bool:
        return image_id in self.list_images()

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        label_info = dict(label_info or {})
        replace = bool(label_info.pop("replace", False))
        values = self.read_label(image_id, label_filename)
        if label_tag != SCRIBBLES_TAG and (values == self.label_set.background_scribble).any():
            logger.info(f"label for {image_id} holds background strokes: storing it as scribbles")
            label_tag = SCRIBBLES_TAG
        self.label_set.check_values(
            values,
            f"label '{label_tag}' for '{image_id}'",
            allow_background_strokes=label_tag == SCRIBBLES_TAG,
        )
        if label_tag == SCRIBBLES_TAG:
            self.add_strokes(image_id, values, replace=replace, label_info=label_info)
            return image_id
        return self._write_label(image_id, values, label_tag, label_info)

    def read_label(self, image_id: str, label_filename: str) -> np.ndarray:
        """A label file's values (int64), checked to lie on the image's grid."""
        image_uri = self.get_image_uri(image_id)
        if label_filename.endswith(".bin"):
            return self._read_binary_label(image_id, image_uri, label_filename)
        reference = load_volume(image_uri, f"image '{image_id}'")
        label = load_volume(label_filename, f"label for '{image_id}'")
        _check_geometry(image_id, label, reference)
        return np.rint(label[0].numpy()).astype(np.int64)

    def add_strokes(
        self,
        image_id: str,
        strokes: np.ndarray,
        erase: np.ndarray | None = None,
        replace: bool = False,
        label_info: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Merge strokes into the stored scribbles (new strokes win; `erase` clears) and return the result.

        When that changes nothing, the stored file is not rewritten."""
        with self._merge_lock:
            stored = None if replace else self.scribbles(image_id)
            merged = strokes if stored is None else np.where(strokes > 0, strokes, stored)
            if erase is not None:
                merged = np.where(erase, 0, merged)
            if stored is not None and np.array_equal(merged, stored):
                return merged  # nothing new: the stored file is left as it is
            self._write_label(image_id, merged, SCRIBBLES_TAG, label_info or {})
        return merged

    def scribbles(self, image_id: str) -> np.ndarray | None:
        """The stored scribbles of a case, or None."""
        uri = self.get_label_uri(image_id, SCRIBBLES_TAG)
        if not uri or not Path(uri).exists():
            return None
        return np.rint(np.asarray(nib.load(uri).dataobj)).astype(np.int64)

    def _write_label(self, image_id: str, values: np.ndarray, tag: str, label_info: dict[str, Any]) -> str:
        affine = load_volume(self.get_image_uri(image_id), f"image '{image_id}'").affine.numpy()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{image_id}.nii.gz"
            nib.save(nib.Nifti1Image(values.astype(np.uint8), affine), path)
            return super().save_label(image_id, str(path), tag, label_info)

    @staticmethod
    def _read_binary_label(image_id: str, image_uri: str, label_filename: str) -> np.ndarray:
        """OHIF's raw uint8 mask (the image's voxels in Fortran order), by MONAI Label's own converter."""
        try:
            converted = binary_to_image(image_uri, label_filename)
        except ValueError as error:  # the byte count does not match the image's voxel count
            raise InvalidInput(f"binary label for '{image_id}' does not fit the image: {error}") from None
        try:
            return np.rint(load_volume(converted, f"label for '{image_id}'")[0].numpy()).astype(np.int64)
        finally:
            os.unlink(converted)


class CmfnetDatastore(ScribbleStore, LocalDatastore):
    def __init__(self, datastore_path: str, labels: LabelSet, companions: list[str], **kwargs):
        self._init_scribble_store(labels, companions)
        super().__init__(datastore_path, **kwargs)

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        if not uri:
            raise NotFound(f"no image '{image_id}' in the datastore")
        return uri

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """A new case image; with `{"modality": "mr"}` in the params, the companion of case `image_id`."""
        image_info = dict(image_info or {})
        modality = image_info.pop("modality", None)
        load_volume(image_filename, f"uploaded image '{image_id}'")
        if modality is None:
            return super().add_image(image_id, image_filename, image_info)
        if modality not in self.companions:
            raise InvalidInput(f"unknown companion modality {modality!r}; this server's are {self.companions}")
        if not image_id:
            raise InvalidInput("a companion upload needs the case id (?image=ID)")
        folder = Path(self._datastore.image_path()) / modality
        folder.mkdir(exist_ok=True)
        extension = "".join(Path(image_filename).suffixes)
        shutil.copy(image_filename, folder / f"{image_id}{extension}")
        return image_id


def _check_geometry(image_id: str, label, reference) -> None:
    if label.shape != reference.shape:
        raise InvalidInput(
            f"label for '{image_id}' has shape {tuple(label.shape[1:])}, "
            f"the image has {tuple(reference.shape[1:])}: labels must be on the image's grid"
        )
    difference = float((label.affine - reference.affine).abs().max())
    if difference > AFFINE_TOLERANCE:
        raise InvalidInput(
            f"label for '{image_id}' has another affine (voxel -> world) than its image "
            f"(differs by up to {difference:.3g} mm): labels must be on the image's grid"
        )
