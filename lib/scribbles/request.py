"""Turn a scribbles infer request into stored strokes.

Slicer sends the strokes only inside the scribbles infer request (MONAI Label 0.8.5); no client
stores them. For a datastore case they are merged into the stored `scribbles` label, and
the segmentation uses everything stored for the case; for an uploaded file (no datastore
case) only the request's own strokes are used.
"""

from lib.datastore import CmfnetDatastore, integer_values
from lib.errors import InvalidInput
from lib.labels import LabelSet
from lib.scribbles.slicer import strokes_from_segments
from lib.transforms.modalities import load_volume


def prepare_scribbles_request(request: dict, datastore: CmfnetDatastore, label_set: LabelSet) -> dict:
    """The request with `strokes` (stored convention), `selected_class` and `strokes_stored` added."""
    if not request.get("label"):
        raise InvalidInput("a scribbles request needs the scribbles labelmap (multipart field `label`)")
    selected_name = request.get("selected_label_name")
    selected = label_set.classes.get(selected_name)
    if selected is None:
        raise InvalidInput(f"selected_label_name {selected_name!r} is not one of {sorted(label_set.classes)}")
    image_id = request["image"]
    in_datastore = isinstance(image_id, str) and datastore.has_image(image_id)
    if in_datastore:
        labelmap = datastore.read_label(image_id, request["label"])
    else:
        labelmap = integer_values(load_volume(request["label"], "scribbles labelmap")[0].numpy(), "scribbles labelmap")
    strokes, erase = strokes_from_segments(labelmap, request.get("label_info") or [], selected_name, label_set)
    if in_datastore:
        strokes, _ = datastore.add_strokes(image_id, strokes, erase)
    return {**request, "strokes": strokes, "selected_class": selected, "strokes_stored": in_datastore}
