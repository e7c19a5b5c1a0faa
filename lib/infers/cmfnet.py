"""The `cmfnet` segmentation task: CT + companion modalities in, a label volume on the CT grid out."""

import logging
import os
from typing import Any

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import Activationsd, AsDiscreted, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.errors import NotReady
from lib.labels import LabelSet
from lib.transforms.modalities import LoadModalitiesd

logger = logging.getLogger(__name__)


class CmFNetSegmentation(BasicInferTask):
    """Sliding-window CmFNet inference on the reference (CT) grid.

    The prediction never leaves the reference grid, so the returned label has exactly the
    CT's shape and affine. A case without a companion is served by the fused path with
    that modality absent, and the result JSON says which modalities were used.
    """

    def __init__(
        self,
        path: str,
        network: torch.nn.Module,
        labels: LabelSet,
        modalities: list[str],
        roi_size: tuple[int, int, int],
        type: InferType = InferType.SEGMENTATION,
        description: str = "CmFNet cross-modal segmentation",
    ):
        super().__init__(
            path=path,
            network=network,
            type=type,
            labels=labels.classes,
            dimension=3,
            description=description,
            roi_size=roi_size,
            config={"modalities": modalities, "sw_overlap": 0.25},
        )
        self.modalities = modalities

    def pre_transforms(self, data=None):
        return [LoadModalitiesd(self.modalities)]

    def inferer(self, data=None) -> Inferer:
        # Always a sliding window: it also pads volumes smaller than the window to a valid size.
        overlap = float(data.get("sw_overlap", 0.25)) if data else 0.25
        return SlidingWindowInferer(roi_size=self.roi_size, sw_batch_size=1, overlap=overlap, mode="gaussian")

    def run_inferer(self, data: dict[str, Any], convert_to_batch=True, device="cuda"):
        network = self._get_network(device, data)
        image = data[self.input_key][None].to(torch.device(device))
        present = data["present"].to(torch.device(device))
        with torch.no_grad():
            data[self.output_label_key] = self.inferer(data)(image, network, present=present)[0]
        return data

    def post_transforms(self, data=None):
        return [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True, dtype=torch.uint8),
            SqueezeDimd(keys="pred", dim=0),
            self._describe_modalities,
        ]

    def _describe_modalities(self, data: dict) -> dict:
        present = data["present"].tolist()
        data["result"] = {
            "modalities_used": [m for m, p in zip(self.modalities, present, strict=True) if p],
            "modalities_missing": [m for m, p in zip(self.modalities, present, strict=True) if not p],
        }
        return data

    def _get_network(self, device, data):
        """The published model; a clear 409 when none has been trained yet.

        If the model file changed but cannot be read (say, a copy in progress), the network
        already in memory keeps serving rather than failing the request.
        """
        path = self.get_path()
        if path is None:
            raise NotReady(
                "no trained cmfnet model yet: store scribbles (PUT /datastore/label?tag=scribbles, or the "
                "scribbles tool) and train (POST /train/cmfnet); the first model is published when it finishes"
            )
        try:
            return super()._get_network(device, data)
        except Exception as e:
            cached = self._networks.get(device)
            if cached is None:
                raise NotReady(f"the model file {os.path.basename(path)} cannot be loaded ({e}); retrain") from e
            logger.warning(f"model file {path} unreadable ({e}); serving the previously loaded model")
            return cached[0]
