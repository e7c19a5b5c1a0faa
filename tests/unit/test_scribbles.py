"""Slicer segment mapping, on tiny hand-made volumes."""

import numpy as np
import pytest

from lib.errors import InvalidInput
from lib.labels import LabelSet
from lib.scribbles.slicer import strokes_from_segments

LABELS = LabelSet({"liver": 1, "spleen": 2})  # K = 2, background stroke = 3


def test_segments_map_to_stored_stroke_values_and_class_segments_are_not_strokes():
    labelmap = np.zeros((4, 4, 4), np.int64)
    labelmap[0] = 1  # "liver": Slicer's copy of the server's segmentation
    labelmap[1, 0, 0] = 2  # background_scribbles
    labelmap[2, 0, 0] = 3  # foreground_scribbles, selected class spleen
    labelmap[3, 0, 0] = 4  # liver_scribbles
    labelmap[3, 1, 1] = 5  # erase_scribbles
    info = [
        {"name": "liver", "id": 1},
        {"name": "background_scribbles", "id": 2},
        {"name": "foreground_scribbles", "id": 3},
        {"name": "liver_scribbles", "id": 4},
        {"name": "erase_scribbles", "id": 5},
    ]
    strokes, erase = strokes_from_segments(labelmap, info, "spleen", LABELS)
    expected = np.zeros((4, 4, 4), np.uint8)
    expected[1, 0, 0] = 3
    expected[2, 0, 0] = 2
    expected[3, 0, 0] = 1
    np.testing.assert_array_equal(strokes, expected)
    assert erase.sum() == 1 and erase[3, 1, 1]


def test_a_request_without_strokes_is_refused():
    labelmap = np.ones((2, 2, 2), np.int64)  # only the class segment has voxels
    info = [{"name": "liver", "id": 1}, {"name": "foreground_scribbles", "id": 2}]
    with pytest.raises(InvalidInput, match="no strokes"):
        strokes_from_segments(labelmap, info, "liver", LABELS)
    with pytest.raises(InvalidInput, match="label_info"):
        strokes_from_segments(labelmap, [], "liver", LABELS)
