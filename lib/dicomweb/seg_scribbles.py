"""Scribbles painted in OHIF and stored in the PACS as DICOM SEG: the convention, and importing one SEG.

**Convention.** A SEG series is scribbles when its SeriesDescription contains "scribble" (any
case; in OHIF: *Export -> DICOM SEG*, report name `scribbles`). Its segments are named after the
classes of the label map, and map to stored stroke values (docs/architecture.md, "Labels and strokes"):

| segment label (any case) | stored as |
| --- | --- |
| a class name, e.g. `liver`, or `liver_scribbles` | strokes of that class (1..K) |
| `background` or `background_scribbles` | background strokes (K+1) |
| `erase` or `erase_scribbles` | removes stored strokes under it |

Any other segment label makes the whole SEG foreign: it is reported and nothing of it is
stored. Other SEG series (dense labels, the server's own results) are not scribbles.

**Import.** The SEG must reference a CT series of the datastore and lie on its voxel grid
(lib.dicomweb.seg_reader). Its strokes are merged into the case's stored scribbles exactly as
Slicer's are (ScribbleStore.add_strokes: new strokes win, erase clears). Importing the same SEG
again changes nothing and the stored file is not rewritten.
"""

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pydicom

from lib.datastore import ScribbleStore
from lib.dicomweb.seg_reader import SegError, read_segments, segment_labels
from lib.labels import LabelSet

MARKER = "scribble"
BACKGROUND = "background"
ERASE = "erase"
SUFFIX = "_scribbles"
ERASE_VALUE = -1


def is_scribble_series(series_description: str) -> bool:
    return MARKER in (series_description or "").lower()


def stroke_values(labels: dict[int, str], label_set: LabelSet) -> dict[int, int]:
    """Segment number -> stored stroke value (ERASE_VALUE for the eraser); SegError for an unknown label."""
    names = {name.lower(): value for name, value in label_set.classes.items()}
    names[BACKGROUND] = label_set.background_scribble
    names[ERASE] = ERASE_VALUE
    values, unknown = {}, []
    for number, label in labels.items():
        name = label.strip().lower().removesuffix(SUFFIX)
        if name in names:
            values[number] = names[name]
        else:
            unknown.append(label)
    if unknown:
        expected = sorted(label_set.classes) + [BACKGROUND, ERASE]
        raise SegError(f"segments {unknown} match no class of the label map (segment labels must be one of {expected})")
    return values


@dataclass(frozen=True)
class SegImport:
    """What importing one SEG instance did."""

    image: str  # the CT series (datastore image id)
    voxels: int  # stroke and eraser voxels in the SEG
    changed: bool  # whether the stored scribbles changed


def referenced_series(seg: pydicom.Dataset) -> str:
    try:
        return str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        raise SegError("the SEG references no series (ReferencedSeriesSequence)") from None


def import_scribble_seg(seg: pydicom.Dataset, store: ScribbleStore, label_set: LabelSet) -> SegImport:
    """Merge a scribble SEG's strokes into the stored scribbles of the CT it references; SegError if it cannot be."""
    image_id = referenced_series(seg)
    if not store.has_image(image_id):
        raise SegError(f"the SEG references series {image_id}, which is not a datastore image (a CT series)")
    values = stroke_values(segment_labels(seg), label_set)
    reference = nib.load(store.get_image_uri(image_id))
    segments = read_segments(seg, reference.affine, reference.shape[:3])
    lookup = np.zeros(max(values, default=0) + 1, np.int64)
    for number, value in values.items():
        lookup[number] = value
    mapped = lookup[segments]
    strokes, erase = np.where(mapped > 0, mapped, 0).astype(np.uint8), mapped == ERASE_VALUE
    if not strokes.any() and not erase.any():
        raise SegError("the SEG holds no strokes")
    _, changed = store.add_strokes(image_id, strokes, erase if erase.any() else None)
    return SegImport(image=image_id, voxels=int((mapped != 0).sum()), changed=changed)
