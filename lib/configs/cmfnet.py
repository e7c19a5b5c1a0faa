"""The `cmfnet` model: labels, modalities, network preset, infer and train tasks.

Settings come from `--conf` (all optional):

| key | default | meaning |
| --- | --- | --- |
| labels | the demo's `{"liver":1,"spleen":2,"bone":3,"tumour":4}` | class name -> id (1..K), JSON |
| modalities | `ct,mr` | reference first, then companions (folder names) |
| preset | `small` | network size: `small` (CPU) or `large` (GPU) |
| roi_size | `96,96,48` | sliding-window size for inference |
| patch_size | `64,64,32` | training patch size |
| max_epochs | `20` | default training budget (a train request may override it) |
| val_interval | `1` | epochs between validations on held-out strokes |
"""

import logging
import os

from monailabel.interfaces.config import TaskConfig

from lib.data.phantoms import DEMO_LABELS
from lib.infers.cmfnet import CmFNetSegmentation
from lib.infers.scribbles import CmFNetScribbles
from lib.labels import LabelSet
from lib.networks.cmfnet import build_cmfnet
from lib.trainers.cmfnet import CmFNetTrainer

logger = logging.getLogger(__name__)


def parse_sizes(text: str, divisor: int, what: str) -> tuple[int, int, int]:
    sizes = tuple(int(v) for v in str(text).split(","))
    if len(sizes) != 3 or any(s <= 0 or s % divisor for s in sizes):
        raise ValueError(f"{what} must be three positive multiples of {divisor} like 64,64,32; got {text!r}")
    return sizes


class CmFNetConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.label_set = LabelSet.parse(conf.get("labels"), DEMO_LABELS)
        self.labels = self.label_set.classes
        self.modalities = [m.strip().lower() for m in conf.get("modalities", "ct,mr").split(",") if m.strip()]
        self.network = build_cmfnet(conf.get("preset", "small"), len(self.modalities), self.label_set.num_classes + 1)
        divisor = self.network.size_divisor
        self.roi_size = parse_sizes(conf.get("roi_size", "96,96,48"), divisor, "roi_size")
        self.patch_size = parse_sizes(conf.get("patch_size", "64,64,32"), divisor, "patch_size")
        self.path = os.path.join(model_dir, f"{name}.pt")
        logger.info(f"{name}: labels {self.labels}, modalities {self.modalities}, model {self.path}")

    def infer(self):
        task = {
            "path": self.path,
            "network": self.network,
            "labels": self.label_set,
            "modalities": self.modalities,
            "roi_size": self.roi_size,
        }
        return {self.name: CmFNetSegmentation(**task), f"{self.name}_scribbles": CmFNetScribbles(**task)}

    def trainer(self):
        return CmFNetTrainer(
            model_dir=os.path.join(self.model_dir, self.name),
            network=self.network,
            labels=self.label_set,
            modalities=self.modalities,
            publish_path=self.path,
            patch_size=self.patch_size,
            infer_roi_size=self.roi_size,
            config={"max_epochs": int(self.conf.get("max_epochs", 20))},
            val_interval=int(self.conf.get("val_interval", 1)),
        )
