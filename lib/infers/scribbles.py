"""The `cmfnet_scribbles` task: an immediate corrected segmentation of one class from strokes.

Its type is `scribbles`, which makes 3D Slicer's MONAI Label module show its Scribbles section.
The app turns the request's labelmap into stored strokes first (lib.scribbles.request); this task
answers with a binary mask of the selected class (1 = the class) on the reference grid: the propagation
(random walker, class appearance, CRF) of every stored stroke of the case (lib.scribbles.propagation),
on the working grid of the published model's plan (or of a plan for this image alone before any model
exists), pooled with the model's probabilities when a model is published (lib.infers.cmfnet.pooled),
and every stroke kept as drawn.
"""

import logging

import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.errors import NotReady
from lib.infers.cmfnet import CmFNetSegmentation, pooled
from lib.planning import make_plan
from lib.scribbles.propagation import keep_strokes, stroke_probabilities
from lib.transforms.grid import restore_labels, voxel_spacing
from lib.transforms.modalities import LoadModalitiesd, load_volume

logger = logging.getLogger(__name__)


class CmFNetScribbles(CmFNetSegmentation):
    def __init__(self, **kwargs):
        super().__init__(
            type=InferType.SCRIBBLES,
            description="Correct one class from scribbles (random walker, class appearance and CRF on CT and MR, "
            "with CmFNet's probabilities)",
            **kwargs,
        )

    def pre_transforms(self, data=None):
        try:
            _, plan = self.model(str(data["device"]))
        except NotReady:
            reference = load_volume(data["image"], "image")
            plan = make_plan([voxel_spacing(reference.affine)], [reference.shape[1:]], len(self.modalities), 2)
        return [LoadModalitiesd(self.modalities, spacing=plan.spacing)]

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        probabilities = stroke_probabilities(data["image"], data["strokes"], len(self.labels), self.modalities[0])
        data["model_used"], data["model_note"] = False, None
        try:
            probabilities = pooled(self.model_probabilities(data, device), probabilities)
            data["model_used"] = True
        except NotReady as e:  # no model yet, or an unreadable one: strokes and images alone, and say why
            logger.warning(f"scribbles without model probabilities: {e.detail}")
            data["model_note"] = e.detail
        data["pred"] = probabilities
        return data

    def post_transforms(self, data=None):
        return [self._selected_mask, self._describe]

    def _selected_mask(self, data: dict) -> dict:
        selected = int(data["selected_class"])
        strokes = np.asarray(data["strokes"])
        labels = keep_strokes(restore_labels(data["pred"], data["reference_shape"]), strokes, len(self.labels))
        mask = labels == selected
        mask = _restrict_to_roi(mask, data.get("roi"))
        data["pred"] = MetaTensor(torch.from_numpy(mask.astype(np.uint8)), affine=data["reference_affine"])
        return data

    def _describe(self, data: dict) -> dict:
        counts = np.bincount(np.asarray(data["strokes"]).ravel())
        data["result"] = {
            "selected_label_name": data.get("selected_label_name"),
            "model_used": data["model_used"],
            **({"model_note": data["model_note"]} if data["model_note"] else {}),
            "strokes_stored": bool(data.get("strokes_stored")),
            "stroke_voxels": {value: int(n) for value, n in enumerate(counts) if value and n},
            "modalities_used": [m for m, p in zip(self.modalities, data["present"].tolist(), strict=True) if p],
        }
        return data


def _restrict_to_roi(mask: np.ndarray, roi) -> np.ndarray:
    """Slicer's ROI is [x0, x1, y0, y1, z0, z1] in voxels; outside it is background, as in MONAI Label."""
    if not roi:
        return mask
    box = np.zeros_like(mask)
    x0, x1, y0, y1, z0, z1 = (int(v) for v in roi)
    box[min(x0, x1) : max(x0, x1) + 1, min(y0, y1) : max(y0, y1) + 1, min(z0, z1) : max(z0, z1) + 1] = True
    return mask & box
