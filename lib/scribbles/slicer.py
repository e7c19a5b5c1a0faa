"""Strokes from a 3D Slicer scribbles request (docs/architecture.md, "Labels and strokes").

Slicer's MONAI Label module sends every segment of its segmentation as one labelmap on
the reference grid, with `label_info` = [{"name": segment, "id": value}, ...] and
`selected_label_name` = the class its foreground scribbles are for. Segment names map to
stored stroke values:

| segment name | meaning |
| --- | --- |
| `foreground_scribbles` | a stroke of the selected class |
| `background_scribbles` | a background stroke (K+1) |
| `<class>_scribbles`, e.g. `spleen_scribbles` | a stroke of that class |
| `erase_scribbles` | removes stored strokes under it |

A segment named exactly as a class (e.g. `liver`) holds the segmentation Slicer got back
from the server, not strokes: storing it as strokes would teach the model its own errors,
so such segments (and any others) are ignored.
"""

import numpy as np

from lib.errors import InvalidInput
from lib.labels import LabelSet

FOREGROUND = "foreground_scribbles"
BACKGROUND = "background_scribbles"
ERASE = "erase_scribbles"
SUFFIX = "_scribbles"


def stroke_values(label_set: LabelSet, selected_label_name: str) -> dict[str, int]:
    """Segment name -> stored stroke value (0 marks the eraser)."""
    values = {f"{name}{SUFFIX}": class_id for name, class_id in label_set.classes.items()}
    values[BACKGROUND] = label_set.background_scribble
    values[ERASE] = 0
    values[FOREGROUND] = label_set.classes[selected_label_name]
    return values


def segment_names(label_info) -> dict[int, str]:
    """Labelmap value -> segment name from `label_info`; InvalidInput (422) when it is not that list."""
    if not label_info:
        raise InvalidInput("scribbles request without label_info: which segment is which is unknown")
    if not isinstance(label_info, list):
        raise InvalidInput(f"label_info must be a list of segments, got {label_info!r}")
    names = {}
    for entry in label_info:
        segment_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(segment_id, str) and segment_id.isdigit():  # a number sent as text
            segment_id = int(segment_id)
        if type(segment_id) is not int or segment_id < 1 or "name" not in entry:
            raise InvalidInput(
                f'label_info entry {entry!r} is not {{"name": segment, "id": its value in the labelmap (1, 2, ...)}}'
            )
        names[segment_id] = str(entry["name"])
    return names


def strokes_from_segments(
    labelmap: np.ndarray, label_info: list[dict], selected_label_name: str, label_set: LabelSet
) -> tuple[np.ndarray, np.ndarray]:
    """(strokes in the stored convention, eraser mask) from Slicer's labelmap and label_info."""
    names = segment_names(label_info)
    values = stroke_values(label_set, selected_label_name)
    strokes = np.zeros(labelmap.shape, np.uint8)
    erase = np.zeros(labelmap.shape, bool)
    for segment_id, name in names.items():
        if name not in values:
            continue
        voxels = labelmap == segment_id
        if name == ERASE:
            erase |= voxels
        else:
            strokes[voxels] = values[name]
    if not strokes.any() and not erase.any():
        painted = sorted(name for segment_id, name in names.items() if (labelmap == segment_id).any())
        raise InvalidInput(
            f"the request holds no strokes: paint in {FOREGROUND}, {BACKGROUND} or <class>{SUFFIX} "
            f"(segments with voxels: {painted})"
        )
    return strokes, erase
