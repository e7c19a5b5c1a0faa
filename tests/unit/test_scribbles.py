"""Slicer segment mapping and the graph-cut correction, on tiny hand-made volumes."""

import numpy as np
import pytest

from lib.errors import InvalidInput
from lib.labels import LabelSet
from lib.scribbles.graphcut import corrected_mask
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


def _two_regions():
    """A (2, 16, 16, 8) image: region A (x < 8) dark in both channels, region B bright, with noise."""
    rng = np.random.default_rng(0)
    image = np.zeros((2, 16, 16, 8), np.float32)
    image[:, 8:] = 1.0
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    return image


def test_graph_cut_grows_from_strokes_into_tissue_of_the_same_look():
    image = _two_regions()
    strokes = np.zeros((16, 16, 8), np.uint8)
    strokes[3, 4:12, 4] = 1  # a liver stroke in region A
    strokes[12, 4:12, 4] = 3  # a background stroke in region B
    mask = corrected_mask(image, strokes, selected=1, spacing=(1.0, 1.0, 1.0))
    region_a = np.zeros_like(mask)
    region_a[:8] = True
    assert (mask == region_a).mean() > 0.98
    assert mask.sum() > 50 * (strokes == 1).sum()


def test_strokes_always_win_over_appearance_and_model():
    image = _two_regions()
    strokes = np.zeros((16, 16, 8), np.uint8)
    strokes[3, 4:12, 4] = 1
    strokes[12, 4:12, 4] = 3
    strokes[4, 4, 4] = 3  # a background stroke inside region A
    strokes[13, 4, 4] = 1  # a liver stroke inside region B
    strokes[5, 5, 5] = 2  # another class's stroke counts as "not liver"
    model = np.full((16, 16, 8), 0.99, np.float32)  # a model sure everything is liver
    mask = corrected_mask(image, strokes, selected=1, spacing=(1.0, 1.0, 1.0), model_probability=model)
    assert mask[strokes == 1].all()
    assert not mask[(strokes == 3) | (strokes == 2)].any()


def test_without_model_or_foreground_strokes_nothing_is_segmented():
    strokes = np.zeros((16, 16, 8), np.uint8)
    strokes[12, 4:12, 4] = 3
    assert not corrected_mask(_two_regions(), strokes, selected=1, spacing=(1.0, 1.0, 1.0)).any()
