"""The `cmfnet_scribbles` task: an immediate corrected segmentation of one class from strokes.

Its type is `scribbles`, which makes 3D Slicer's MONAI Label module show its Scribbles
section. The app turns the request's labelmap into stored strokes first
(lib.scribbles.request); this task answers with a binary mask of the selected class
(1 = the class), on the reference grid, from the current model's probabilities (when a
model is published), the strokes and every modality (lib.scribbles.graphcut).
"""

import logging

import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.errors import NotReady
from lib.infers.cmfnet import CmFNetSegmentation
from lib.scribbles.graphcut import corrected_mask

logger = logging.getLogger(__name__)


class CmFNetScribbles(CmFNetSegmentation):
    def __init__(self, **kwargs):
        super().__init__(
            type=InferType.SCRIBBLES,
            description="Correct one class from scribbles (graph cut on CmFNet probabilities, CT and MR)",
            **kwargs,
        )

    def is_valid(self) -> bool:
        return True  # works before any model is trained (strokes and intensities alone)

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        selected = int(data["selected_class"])
        probability = None
        try:
            data = super().run_inferer(data, convert_to_batch, device)
            probability = torch.softmax(data["pred"].float(), dim=0)[selected].cpu().numpy()
        except NotReady as e:
            logger.info(f"scribbles without model probabilities: {e.detail}")
        image = data["image"]
        present = data["present"].numpy()
        spacing = tuple(float(s) for s in torch.linalg.norm(image.affine[:3, :3].float(), dim=0))
        mask = corrected_mask(image.numpy()[present], np.asarray(data["strokes"]), selected, spacing, probability)
        mask = _restrict_to_roi(mask, data.get("roi"))
        data["pred"] = MetaTensor(torch.from_numpy(mask.astype(np.uint8)), meta=image.meta)
        data["model_used"] = probability is not None
        return data

    def post_transforms(self, data=None):
        return [self._describe]

    def _describe(self, data: dict) -> dict:
        counts = np.bincount(np.asarray(data["strokes"]).ravel())
        data["result"] = {
            "selected_label_name": data.get("selected_label_name"),
            "model_used": data["model_used"],
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
