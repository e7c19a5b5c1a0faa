"""MONAI Label's HistogramBasedGraphCut as a method of the benchmarks: strokes in, a multi-class label map out.

The task runs as shipped (its pre-transforms resample to its default 2.5 x 2.5 x 5 mm, its histogram
likelihood, its ISeg unary and numpymaxflow graph cut, restored to the image grid) on the CT, the
image the server serves and the radiology app runs it on. It is binary, so multi-class is
one-vs-rest: for class c, strokes of c are foreground and every other stroke (other classes and
background) is background. A voxel claimed by several classes goes to the class with the nearest
stroke (Euclidean distance in mm); unclaimed voxels are background. Nothing here trains, so it
imports nothing of the training code.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt


def graphcut(
    ct_path: str, scribbles: np.ndarray, affine: np.ndarray, num_classes: int, pix_dim: Sequence[float] | None = None
) -> np.ndarray:
    """MONAI Label's HistogramBasedGraphCut, one-vs-rest over the classes (see the module docstring).

    `pix_dim`: the grid the task works on; None = its default (2.5, 2.5, 5.0) mm. The smoke test passes
    the image's own spacing, since the default grid makes each cut take seconds.
    """
    from monailabel.scribbles.infer import HistogramBasedGraphCut
    from monailabel.transform.writer import write_itk

    logging.getLogger("monailabel").setLevel(logging.WARNING)  # it logs every transform of every request
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    # its defaults otherwise: labels None -> background stroke 2, foreground stroke 3; lamda 1, sigma 0.1, 64 bins
    task = HistogramBasedGraphCut() if pix_dim is None else HistogramBasedGraphCut(pix_dim=tuple(pix_dim))
    claimed = np.zeros((num_classes, *scribbles.shape), bool)
    distance = np.full((num_classes, *scribbles.shape), np.inf, np.float32)
    with tempfile.TemporaryDirectory() as folder:
        # NRRD, not NIfTI: with MONAI 1.6 the task's Spacingd tries to update the request's `image_path`
        # string as a meta dict when the image is a NIfTI file (AttributeError); NRRD skips that branch.
        image = str(Path(folder) / "image.nrrd")
        ct = np.asarray(_load_array(ct_path))
        write_itk(ct, image, affine, ct.dtype, compress=False)
        for c in range(1, num_classes + 1):
            if not (scribbles == c).any():
                continue
            codes = np.zeros(scribbles.shape, np.uint8)
            codes[(scribbles > 0) & (scribbles != c)] = 2
            codes[scribbles == c] = 3
            label = str(Path(folder) / f"strokes_{c}.nrrd")
            write_itk(codes, label, affine, np.uint8, compress=False)
            _, data = task({"image": image, "label": label, "device": "cpu", "skip_writer": True, "logging": "WARNING"})
            pred = np.asarray(data["pred"])
            claimed[c - 1] = (pred[0] if pred.ndim == 4 else pred) > 0
            distance[c - 1] = distance_transform_edt(scribbles != c, sampling=spacing)
    labels = np.where(claimed, distance, np.inf).argmin(0) + 1
    labels[~claimed.any(0)] = 0
    return labels.astype(np.uint8)


def _load_array(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)
