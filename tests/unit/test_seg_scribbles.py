"""Scribble SEGs without a server: segment names -> stroke values, and a Label Map SEG read onto the CT grid."""

from pathlib import Path

import numpy as np
import pytest

from lib.data.dicom_export import export_phantom
from lib.data.phantoms import DEMO_LABELS, make_case
from lib.dicomweb.seg_reader import SegError, read_segments
from lib.dicomweb.seg_scribbles import ERASE_VALUE, is_scribble_series, stroke_values
from lib.labels import LabelSet
from tests.dicom_seg import ct_series, labelmap_seg

LABELS = LabelSet(DEMO_LABELS)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    case = export_phantom(0, "case_000", tmp_path_factory.mktemp("seg"))
    return ct_series(Path(case["folder"]) / "CT")


def painted() -> np.ndarray:
    segments = np.zeros(make_case(0).ct.shape, np.uint8)
    segments[40:50, 30:33, 20] = 1
    segments[10:12, 10:14, 22] = 2
    return segments


def test_scribble_series_are_named_so():
    assert is_scribble_series("scribbles") and is_scribble_series("Liver Scribbles v2")
    assert not is_scribble_series("CmFNet result 2026-01-01 10:00:00") and not is_scribble_series("")


def test_segment_names_map_to_stored_stroke_values():
    labels = {1: "Liver", 2: "spleen_scribbles", 3: "background", 4: "erase"}
    assert stroke_values(labels, LABELS) == {1: 1, 2: 2, 3: LABELS.background_scribble, 4: ERASE_VALUE}
    with pytest.raises(SegError, match=r"\['kidney'\] match no class"):
        stroke_values({1: "liver", 2: "kidney"}, LABELS)


def test_label_map_seg_is_read_at_its_voxels(ct):
    seg = labelmap_seg(ct, painted(), {1: "liver", 2: "background"}, "scribbles")  # RLE, as OHIF stores it
    phantom = make_case(0)
    np.testing.assert_array_equal(read_segments(seg, phantom.ct_affine, phantom.ct.shape), painted())


def test_a_seg_off_the_ct_grid_or_undecodable_is_an_error(ct):
    phantom = make_case(0)
    shifted = labelmap_seg(ct, painted(), {1: "liver", 2: "background"}, "scribbles", rle=False)
    shifted.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[1] += 1.75
    with pytest.raises(SegError, match="not on the image's voxel grid"):
        read_segments(shifted, phantom.ct_affine, phantom.ct.shape)
    unnamed = labelmap_seg(ct, painted(), {1: "liver"}, "scribbles")  # segment 2 is not in SegmentSequence
    with pytest.raises(SegError, match=r"segment numbers \[2\]"):
        read_segments(unnamed, phantom.ct_affine, phantom.ct.shape)
    truncated = labelmap_seg(ct, painted(), {1: "liver", 2: "background"}, "scribbles", rle=False)
    truncated.PixelData = truncated.PixelData[:10]
    with pytest.raises(SegError, match="pixel data cannot be decoded"):
        read_segments(truncated, phantom.ct_affine, phantom.ct.shape)
