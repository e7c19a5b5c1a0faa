"""The checks and scribble handling this app needs, on MONAI Label's datastores.

:class:`ScribbleStore` (for the local datastore here and the DICOMweb one in lib.dicomweb):

- Uploaded labels are read and checked before anything is stored, so a corrupt or mismatched
  upload never replaces good data: a label must have the image's shape and affine, and integer
  values (never rounded) in 0..K (`final`) or 0..K+1 (`scribbles`). OHIF's raw `.bin` masks are
  read on the image's grid.
- Model output never lands on human annotations: a label saved with a `model` in its info (as
  MONAI Label's inference saves its results) is refused (409) in `scribbles`, `final` and any
  tag where some case holds a label saved without one.
- Scribbles are merged into what is stored (new strokes win where they overlap), never
  silently replaced; `{"replace": true}` in the save params replaces them on purpose.
- A label sent as `final` that holds background strokes (K+1, as OHIF can send) is stored
  as scribbles: a mask with strokes in it is not dense supervision.

:class:`CmfnetDatastore` (local folders) also:

- answers unknown image ids with a 404, not an empty path that fails later;
- reads uploaded images before storing them, and with params `{"modality": "mr"}` stores
  `PUT /datastore/image?image=ID` as the MR companion of case ID (`<studies>/mr/ID.<ext>`);
- refuses (409) to replace the image of a case that has labels with an image on another grid
  (the labels would no longer fit it) unless the params say `{"drop_labels": true}`;
- deletes a case whole: its image, its companions and all its labels.

Both check every image id and label tag as a name first (lib.names.checked_names).
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
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.errors import Conflict, InvalidInput, NotFound
from lib.labels import SCRIBBLES_TAG, LabelSet
from lib.names import checked_names
from lib.transforms.modalities import companion_path, load_volume

logger = logging.getLogger(__name__)

HUMAN_TAGS = (SCRIBBLES_TAG, DefaultLabelTag.FINAL.value)
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
        if written_by_model(label_info):
            self.check_model_output_tag(label_tag)
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
        return integer_values(label[0].numpy(), f"label for '{image_id}'")

    def human_tags(self) -> set[str]:
        """`scribbles`, `final` and every tag where some case holds a label not written by a model."""
        tags = set(HUMAN_TAGS)
        for image_id in self.list_images():
            for tag in self.get_labels_by_image_id(image_id):
                if tag not in tags and not written_by_model(self.get_label_info(image_id, tag)):
                    tags.add(tag)
        return tags

    def check_model_output_tag(self, tag: str) -> None:
        """Conflict (409) when model output would be saved under a tag holding human annotations."""
        if tag in self.human_tags():
            raise Conflict(
                f"label tag '{tag}' holds human annotations: model output is never saved there "
                f"(choose another label_tag, e.g. 'original')"
            )

    def add_strokes(
        self,
        image_id: str,
        strokes: np.ndarray,
        erase: np.ndarray | None = None,
        replace: bool = False,
        label_info: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, bool]:
        """Merge strokes into the stored scribbles (new strokes win; `erase` clears): the result, and whether
        the stored scribbles changed (when not, the stored file is not rewritten)."""
        with self._merge_lock:
            stored = None if replace else self.scribbles(image_id)
            merged = strokes if stored is None else np.where(strokes > 0, strokes, stored)
            if erase is not None:
                merged = np.where(erase, 0, merged)
            if stored is not None and np.array_equal(merged, stored):
                return merged, False
            self._write_label(image_id, merged, SCRIBBLES_TAG, label_info or {})
        return merged, True

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
            what = f"label for '{image_id}'"
            return integer_values(load_volume(converted, what)[0].numpy(), what)
        finally:
            os.unlink(converted)


@checked_names
class CmfnetDatastore(ScribbleStore, LocalDatastore):
    def __init__(self, datastore_path: str, labels: LabelSet, companions: list[str], **kwargs):
        self._init_scribble_store(labels, companions)
        # MONAI Label's catalogue (an in-memory dict) is not thread-safe, and its file watcher reconciles it
        # from a thread of its own while requests add, remove and reconcile: one at a time
        self._catalogue_lock = threading.RLock()
        super().__init__(datastore_path, **kwargs)

    def refresh(self) -> None:
        with self._catalogue_lock:
            super().refresh()

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        if not uri:
            raise NotFound(f"no image '{image_id}' in the datastore")
        return uri

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """A new case image; with `{"modality": "mr"}` in the params, the companion of case `image_id`.

        Replacing the image of a case that has labels with one on another grid is refused unless
        the params say `{"drop_labels": true}`, which deletes them."""
        image_info = dict(image_info or {})
        modality = image_info.pop("modality", None)
        drop_labels = bool(image_info.pop("drop_labels", False))
        upload = load_volume(image_filename, f"uploaded image '{image_id}'")
        if modality is None:
            with self._catalogue_lock:
                if self.has_image(image_id):
                    return self._replace_image(image_id, image_filename, image_info, upload, drop_labels)
                return super().add_image(image_id, image_filename, image_info)
        if modality not in self.companions:
            raise InvalidInput(f"unknown companion modality {modality!r}; this server's are {self.companions}")
        if not image_id:
            raise InvalidInput("a companion upload needs the case id (?image=ID)")
        folder = Path(self._datastore.image_path()) / modality
        folder.mkdir(exist_ok=True)
        self._remove_companion(folder.parent / f"{image_id}.nii.gz", modality)  # any file of it, whatever its extension
        extension = "".join(Path(image_filename).suffixes)
        shutil.copy(image_filename, folder / f"{image_id}{extension}")
        return image_id

    def remove_image(self, image_id: str) -> None:
        """The whole case: companions, labels of every tag and the image (404 if there is no such image)."""
        with self._catalogue_lock:
            reference = self.get_image_uri(image_id)
            for modality in self.companions:
                self._remove_companion(reference, modality)
            super().remove_image(image_id)
            self._forget_removed_files()

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with self._catalogue_lock:
            if not super().get_label_uri(label_id, label_tag):
                raise NotFound(f"no label '{label_tag}' for '{label_id}' in the datastore")
            super().remove_label(label_id, label_tag)
            self._forget_removed_files()

    def _forget_removed_files(self) -> None:
        """With auto-reload, MONAI Label leaves deleted files to its file watcher, which may run after
        the next request (a case deleted and uploaded again was then taken for a replacement of a
        file that no longer exists): reconcile with the disk now."""
        if self._auto_reload:
            self.refresh()

    def _replace_image(self, image_id: str, image_filename: str, image_info: dict, upload, drop_labels: bool) -> str:
        """A new image for an existing case; its labels must fit the new grid unless dropped on request."""
        previous = self.get_image_uri(image_id)
        tags = sorted(self.get_labels_by_image_id(image_id))
        if tags and drop_labels:
            logger.info(f"image of '{image_id}' replaced with drop_labels: deleting its labels {tags}")
            for tag in tags:
                self.remove_label(image_id, tag)
        elif tags:
            difference = grid_difference(upload, load_volume(previous, f"image '{image_id}'"))
            if difference:
                raise Conflict(
                    f"case '{image_id}' has labels {tags} on the grid of its current image, and the new image "
                    f'has {difference}: they would no longer fit. Send params {{"drop_labels": true}} to replace '
                    f"the image and delete these labels"
                )
        kept = {} if drop_labels else dict(self._datastore.objects[image_id].labels)
        super().add_image(image_id, image_filename, image_info)
        if kept:  # MONAI Label's add_image starts the case afresh; its labels (and their info) still fit
            self._datastore.objects[image_id].labels.update(kept)
            self._update_datastore_file()
        if previous != super().get_image_uri(image_id):  # the new file has another extension
            os.unlink(previous)
        return image_id

    @staticmethod
    def _remove_companion(reference: str | Path, modality: str) -> None:
        while (path := companion_path(reference, modality)) is not None:
            logger.info(f"removing the {modality.upper()} companion {path}")
            path.unlink()


def written_by_model(label_info: dict[str, Any]) -> bool:
    """MONAI Label's inference saves its results with `{"model": name, "params": ...}` as label info."""
    return "model" in label_info


def integer_values(values: np.ndarray, what: str) -> np.ndarray:
    """`values` as int64 when all are whole numbers; a label with fractions is refused, never rounded."""
    bad = ~np.isfinite(values)
    bad[~bad] = values[~bad] != np.round(values[~bad])
    if bad.any():
        examples = ", ".join(f"{value:g}" for value in np.unique(values[bad])[:5])
        raise InvalidInput(
            f"{what} holds values that are not whole numbers, e.g. {examples}: "
            f"a label holds integer class ids, and this server does not round them"
        )
    return values.astype(np.int64)


def grid_difference(volume, reference) -> str | None:
    """How `volume`'s grid (shape, voxel -> world affine) differs from `reference`'s, or None."""
    if volume.shape != reference.shape:
        return f"shape {tuple(volume.shape[1:])} instead of {tuple(reference.shape[1:])}"
    difference = float((volume.affine - reference.affine).abs().max())
    if difference > AFFINE_TOLERANCE:
        return f"another affine (voxel -> world, differing by up to {difference:.3g} mm)"
    return None


def _check_geometry(image_id: str, label, reference) -> None:
    difference = grid_difference(label, reference)
    if difference:
        raise InvalidInput(f"label for '{image_id}' is not on its image's grid ({difference}): labels must be")
