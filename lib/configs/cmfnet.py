"""The `cmfnet` model: labels, modalities, infer and train tasks, from the server's settings (lib.settings)."""

import logging
import os

from monailabel.interfaces.config import TaskConfig

from lib.infers.cmfnet import CmFNetSegmentation
from lib.infers.scribbles import CmFNetScribbles
from lib.labels import LabelSet
from lib.settings import parse_conf
from lib.trainers.cmfnet import CmFNetTrainer

logger = logging.getLogger(__name__)


class CmFNetConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.settings, self.train_defaults = parse_conf(conf)
        self.label_set = LabelSet.parse(self.settings.labels)
        self.labels = self.label_set.classes
        self.modalities = self.settings.modality_list
        self.path = os.path.join(model_dir, f"{name}.pt")
        logger.info(f"{name}: labels {self.labels}, modalities {self.modalities}, model {self.path}")

    def infer(self):
        task = {"path": self.path, "labels": self.label_set, "modalities": self.modalities}
        return {self.name: CmFNetSegmentation(**task), f"{self.name}_scribbles": CmFNetScribbles(**task)}

    def trainer(self):
        return CmFNetTrainer(
            model_dir=os.path.join(self.model_dir, self.name),
            labels=self.label_set,
            modalities=self.modalities,
            publish_path=self.path,
            defaults=self.train_defaults,
            preset=self.settings.preset,
        )
