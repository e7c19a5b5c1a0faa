"""The requests 3D Slicer's MONAI Label module sends, made from strokes and sent to a running server.

An Update in Slicer's Scribbles section sends one labelmap on the CT grid with the segments in
Slicer's order: the result's class segments (what the server answered last), then
`background_scribbles` and `foreground_scribbles` (for the selected class), then a
`<class>_scribbles` segment per other class with strokes (a Slicer user adds these by name); ids
are positional in `label_info`, later segments drawn over earlier ones (lib.scribbles.slicer reads
them back).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.server import Server

RESULT = {"result_extension": ".nrrd", "result_dtype": "uint8"}  # what Slicer asks for


def scribbles_request(
    new: np.ndarray, result: np.ndarray | None, labels: dict[str, int]
) -> tuple[np.ndarray, list[dict], str]:
    """(labelmap, label_info, selected_label_name) of one Update with `new` strokes (stored convention) over
    `result`; the selected class is the one with most new voxels."""
    names = {v: k for k, v in labels.items()}
    background = len(labels) + 1
    counts = {c: int((new == c).sum()) for c in labels.values()}
    selected = max(counts, key=lambda c: (counts[c], -c))
    segments = [(name, result == c) for name, c in labels.items()] if result is not None else []
    segments += [("background_scribbles", new == background), ("foreground_scribbles", new == selected)]
    segments += [(f"{names[c]}_scribbles", new == c) for c in labels.values() if c != selected and counts[c]]
    labelmap = np.zeros(new.shape, np.uint8)
    for index, (_, mask) in enumerate(segments, start=1):
        labelmap[mask] = index
    return labelmap, [{"name": name, "id": i} for i, (name, _) in enumerate(segments, start=1)], names[selected]


class SlicerClient:
    """Slicer's calls to `server`, through monailabel's own client (files go through `folder`)."""

    def __init__(self, server: Server, labels: dict[str, int], folder: Path):
        from monailabel.client import MONAILabelClient

        self.labels, self.folder = labels, Path(folder)
        self.client = MONAILabelClient(server.url, tmpdir=str(folder))

    def scribbles(self, case_id: str, new: np.ndarray, result: np.ndarray | None, affine: np.ndarray) -> dict:
        """`POST /infer/cmfnet_scribbles` with the new strokes (the server stores them); its answer's params."""
        from monailabel.transform.writer import write_itk

        labelmap, label_info, selected = scribbles_request(new, result, self.labels)
        path = str(self.folder / f"scribbles_{case_id}.nrrd")
        write_itk(labelmap, path, affine, np.uint8, compress=True)
        params = {"label_info": label_info, "selected_label_name": selected, "roi": [], **RESULT}
        answer, body = self.client.infer("cmfnet_scribbles", case_id, params, label_in=path)
        os.unlink(answer)
        return body

    def save_label(self, case_id: str, labels: np.ndarray, affine: np.ndarray, tag: str = "scribbles") -> None:
        """`PUT /datastore/label`: Slicer's Submit Label."""
        path = self.folder / f"labels_{case_id}.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), path)
        self.client.save_label(case_id, str(path), tag=tag)

    def segmentation(self, case_id: str, use_strokes: bool = True) -> np.ndarray:
        """`POST /infer/cmfnet`: the result Slicer shows (the case's stored strokes honoured unless told not to)."""
        from monai.transforms import LoadImage

        answer, _ = self.client.infer("cmfnet", case_id, {**RESULT, "use_strokes": use_strokes})
        labels = np.asarray(LoadImage(image_only=True)(answer)).astype(np.uint8)
        os.unlink(answer)
        return labels
