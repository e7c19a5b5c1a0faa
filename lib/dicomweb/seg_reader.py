"""A DICOM SEG read onto a reference image's voxel grid (world coordinates), as segment numbers.

Two encodings are read, with pydicom (which decodes uncompressed and RLE Lossless pixel data):

- **Label Map** Segmentation (SOP class ...66.7, what OHIF 3.13 stores by default): each
  frame's pixel value is a segment number;
- **binary** Segmentation (...66.4, what dcmqi and MONAI Label write): each frame belongs to the
  segment its SegmentIdentificationSequence names, pixels > 0 are in it.

Neither pydicom-seg nor a highdicom that runs with the pinned pydicom 2.4.4 reads Label Map SEG,
hence this reader. Every frame is placed by its ImagePositionPatient and the SEG's orientation
and pixel spacing (DICOM LPS) on the reference grid (NIfTI RAS affine): a frame whose pixels are
not on reference voxels, a voxel in two segments, or a frame outside the image is an error.
"""

import numpy as np
import pydicom

LABELMAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"
BINARY_SEG = "1.2.840.10008.5.1.4.1.1.66.4"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# how far (in voxels) a SEG pixel centre may lie from a reference voxel centre
GRID_TOLERANCE = 0.1


class SegError(ValueError):
    """The SEG cannot be read onto the reference grid; the message says why."""


def segment_labels(seg: pydicom.Dataset) -> dict[int, str]:
    """Segment number -> SegmentLabel."""
    return {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in seg.get("SegmentSequence", [])}


def read_segments(seg: pydicom.Dataset, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The SEG's segment numbers on the reference grid (uint16, 0 = no segment)."""
    sop_class = str(seg.get("SOPClassUID", ""))
    if sop_class not in (LABELMAP_SEG, BINARY_SEG):
        raise SegError(f"SOP class {sop_class} is not a DICOM SEG (binary or label map)")
    if sop_class == BINARY_SEG and seg.get("SegmentationType") != "BINARY":
        raise SegError(f"segmentation type {seg.get('SegmentationType')} is not read (BINARY or LABELMAP are)")
    try:
        frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    except Exception as error:  # pydicom raises many types for missing or undecodable pixel data
        raise SegError(f"pixel data cannot be decoded: {error}") from None
    groups = seg.get("PerFrameFunctionalGroupsSequence", [])
    if len(groups) != len(frames):
        raise SegError(f"{len(frames)} frames but {len(groups)} per-frame functional groups")
    known = set(segment_labels(seg))
    volume = np.zeros(shape, np.uint16)
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=float))
    for index, (frame, group) in enumerate(zip(frames, groups, strict=True), start=1):
        values = _frame_segments(sop_class, frame, group, index)
        rows, columns = np.nonzero(values)
        if rows.size == 0:
            continue
        unknown = set(np.unique(values[rows, columns]).tolist()) - known
        if unknown:
            raise SegError(f"frame {index} holds segment numbers {sorted(unknown)} that SegmentSequence lacks")
        voxels = _frame_voxels(seg, group, to_voxel, rows, columns, index)
        if ((voxels < 0) | (voxels >= np.array(shape))).any():
            raise SegError(f"frame {index} lies (partly) outside the image")
        i, j, k = voxels.T
        previous = volume[i, j, k]
        new = values[rows, columns]
        if ((previous > 0) & (previous != new)).any():
            raise SegError(
                f"frame {index}: segments overlap at {int(((previous > 0) & (previous != new)).sum())} voxels"
            )
        volume[i, j, k] = new
    return volume


def _frame_segments(sop_class: str, frame: np.ndarray, group: pydicom.Dataset, index: int) -> np.ndarray:
    if sop_class == LABELMAP_SEG:
        return frame.astype(np.uint16)
    try:
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    except (AttributeError, IndexError):
        raise SegError(f"frame {index} names no segment (SegmentIdentificationSequence)") from None
    return np.where(frame > 0, segment, 0).astype(np.uint16)


def _frame_voxels(
    seg: pydicom.Dataset,
    group: pydicom.Dataset,
    to_voxel: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    index: int,
) -> np.ndarray:
    """Reference voxel indices (N, 3) of a frame's pixels (row, column)."""
    try:
        origin = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        orientation = _functional(seg, group, "PlaneOrientationSequence").ImageOrientationPatient
        spacing = _functional(seg, group, "PixelMeasuresSequence").PixelSpacing
    except (AttributeError, IndexError):
        raise SegError(f"frame {index} has no position, orientation or pixel spacing") from None
    along_row, along_column = np.array(orientation[:3], float), np.array(orientation[3:], float)
    world = (
        np.array(origin)[None]
        + columns[:, None] * float(spacing[1]) * along_row[None]
        + rows[:, None] * float(spacing[0]) * along_column[None]
    )
    voxels = (to_voxel[:3, :3] @ (LPS_TO_RAS @ world.T) + to_voxel[:3, 3:]).T
    nearest = np.rint(voxels)
    if np.abs(voxels - nearest).max() > GRID_TOLERANCE:
        raise SegError(f"frame {index} is not on the image's voxel grid (another geometry or frame of reference)")
    return nearest.astype(np.int64)


def _functional(seg: pydicom.Dataset, group: pydicom.Dataset, name: str) -> pydicom.Dataset:
    """A functional group item, per frame or else shared."""
    if name in group:
        return group[name][0]
    return seg.SharedFunctionalGroupsSequence[0][name][0]
