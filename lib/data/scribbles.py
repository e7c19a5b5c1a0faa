"""Scribbles simulated from dense labels, WORD-style (as the WORD data set ships its own).

Per axial slice and per class: erode the class mask, skeletonize it, and keep a part of
the skeleton (the skeleton pixels within a radius of a random skeleton pixel), on a chosen
fraction of the slices where the class appears. Background strokes are made the same way
from the background inside the body. Output follows the stored convention: 0 = none,
1..K = class stroke, K+1 = background stroke.
"""

import argparse
import json
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy.ndimage import binary_erosion, binary_fill_holes
from skimage.morphology import skeletonize

from lib.transforms.intensity import CT_AIR_HU


@dataclass(frozen=True)
class ScribbleSettings:
    slice_fraction: float = 0.3  # fraction of the slices holding a class that get a stroke of it
    erosion: int = 2  # erosion iterations (in-plane) before skeletonizing
    keep: float = 0.5  # radius of the kept part, as a fraction of the skeleton's extent
    background: bool = True
    body_threshold: float | None = None  # image value above which a voxel is "body" (for background)
    # A stroke shorter than this (pixels) gets a straight segment through the structure along its long axis,
    # as an annotator would draw across a small blob whose skeleton is a dot; 0 = skeleton only (WORD).
    min_length: int = 0


# The annotation every simulated case gets (the demo, the benchmarks' phantoms and real scan): strokes on
# 40 % of the slices holding a structure, whole skeletons, background strokes inside the body (air on CT):
# about 0.8 % of a phantom's voxels, 0.7 % of the real abdominal CT's
PROTOCOL = ScribbleSettings(body_threshold=CT_AIR_HU, min_length=5, slice_fraction=0.4, keep=1.0)


def stroke_in_slice(mask2d: np.ndarray, settings: ScribbleSettings, rng: np.random.Generator) -> np.ndarray:
    """One stroke inside a 2D mask: a partial skeleton of it; small structures that erosion wipes out keep
    their own skeleton. Every stroke pixel lies inside `mask2d`."""
    eroded = binary_erosion(mask2d, iterations=settings.erosion) if settings.erosion else mask2d
    skeleton = skeletonize(eroded if eroded.any() else mask2d)
    points = np.argwhere(skeleton)
    if len(points) == 0:
        return skeleton
    seed = points[rng.integers(len(points))]
    extent = np.ptp(points, axis=0).max() + 1
    distance = np.linalg.norm(points - seed, axis=1)
    kept = points[distance <= max(2.0, settings.keep * extent)]
    stroke = np.zeros_like(skeleton)
    stroke[tuple(kept.T)] = True
    if stroke.sum() < settings.min_length:
        segment = _segment(eroded, settings.min_length) if eroded.any() else stroke
        if segment.sum() < settings.min_length:  # the eroded core is too small: across the structure itself
            segment = _segment(mask2d, settings.min_length)
        stroke |= segment
    return stroke


def _segment(mask2d: np.ndarray, length: int) -> np.ndarray:
    """The pixels of `mask2d` on a straight segment of `length` pixels through its centroid, along its long axis."""
    points = np.argwhere(mask2d).astype(float)
    centre = points.mean(axis=0)
    direction = np.array([1.0, 0.0])
    if len(points) > 1:
        _, vectors = np.linalg.eigh(np.cov(points.T))
        direction = vectors[:, -1]
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
    pixels = np.unique(np.rint(centre + t[:, None] * direction).astype(int), axis=0)
    inside = (pixels >= 0).all(axis=1) & (pixels < mask2d.shape).all(axis=1)
    pixels = pixels[inside]
    segment = np.zeros(mask2d.shape, bool)
    segment[tuple(pixels.T)] = True
    return segment & mask2d


def simulate_scribbles(
    labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    settings: ScribbleSettings = ScribbleSettings(),
    image: np.ndarray | None = None,
    axis: int = 2,
) -> np.ndarray:
    """Scribbles (uint8, stored convention) for a dense label volume of ids 0..num_classes.

    Background strokes are drawn inside the body: where `image` > settings.body_threshold
    when both are given, else anywhere; holes are filled slice by slice.
    """
    rng = np.random.default_rng(seed)
    labels = np.moveaxis(labels, axis, 0)
    body = None
    if image is not None and settings.body_threshold is not None:
        body = np.moveaxis(image, axis, 0) > settings.body_threshold
    scribbles = np.zeros(labels.shape, np.uint8)
    classes = [(c, labels == c) for c in range(1, num_classes + 1)]
    if settings.background:
        background = labels == 0
        if body is not None:
            background &= np.stack([binary_fill_holes(s) for s in body])
        classes.append((num_classes + 1, background))
    for value, mask in classes:
        slices = np.flatnonzero(mask.any(axis=(1, 2)))
        if len(slices) == 0:
            continue
        count = max(1, round(settings.slice_fraction * len(slices)))
        for z in rng.choice(slices, size=count, replace=False):
            stroke = stroke_in_slice(mask[z], settings, rng)
            scribbles[z][stroke & (scribbles[z] == 0)] = value
    return np.moveaxis(scribbles, 0, axis)


def annotated_fraction(scribbles: np.ndarray) -> float:
    """Fraction of voxels that carry a stroke."""
    return float((scribbles > 0).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description="Simulate WORD-style scribbles from a dense label volume.")
    parser.add_argument("labels", help="dense label volume (NIfTI), ids 0..K")
    parser.add_argument("out", help="where to write the scribbles (NIfTI, same grid)")
    parser.add_argument("--num-classes", type=int, help="K (default: the largest id in the labels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slice-fraction", type=float, default=ScribbleSettings.slice_fraction)
    parser.add_argument("--keep", type=float, default=ScribbleSettings.keep)
    parser.add_argument("--erosion", type=int, default=ScribbleSettings.erosion)
    parser.add_argument(
        "--min-length",
        type=int,
        default=ScribbleSettings.min_length,
        help="strokes shorter than this (pixels) get a segment along the structure's long axis",
    )
    args = parser.parse_args(argv)

    nii = nib.load(args.labels)
    labels = np.asarray(nii.dataobj).astype(np.int64)
    num_classes = args.num_classes or int(labels.max())
    settings = ScribbleSettings(
        slice_fraction=args.slice_fraction, keep=args.keep, erosion=args.erosion, min_length=args.min_length
    )
    scribbles = simulate_scribbles(labels, num_classes, args.seed, settings)
    nib.save(nib.Nifti1Image(scribbles, nii.affine), args.out)
    counts = {int(v): int(n) for v, n in zip(*np.unique(scribbles, return_counts=True), strict=True) if v}
    print(json.dumps({"annotated_fraction": annotated_fraction(scribbles), "voxels_per_value": counts}))


if __name__ == "__main__":
    main()
