"""The `cmfnet` train task: hybrid supervision from scribbles and `final` labels.

Extends MONAI Label's BasicTrainTask (datalist, CacheDataset, ignite trainer/evaluator,
checkpoints, stats in /info) and changes what it cannot express by configuration:

- the datalist comes from every image with scribbles or a `final` label (the datastore's
  own `datalist()` lists `final` only);
- a training iteration runs the network's fused and per-modality paths with modality
  dropout and the hybrid loss, which SupervisedTrainer's default iteration cannot;
- the key metric is accuracy on held-out strokes (lib.metrics.StrokeAccuracy), real
  without dense labels, so MONAI Label saves and publishes models;
- the best model is published atomically (copy, then rename), so a crash mid-copy never
  leaves a broken model file for inference to load.
"""

import filecmp
import logging
import os
import shutil
from pathlib import Path

import torch
from ignite.engine import Events
from monai.handlers import IgniteMetricHandler, from_engine
from monai.inferers import SlidingWindowInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
)
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from lib.datastore import SCRIBBLES_TAG
from lib.errors import InvalidInput
from lib.labels import LabelSet
from lib.losses.hybrid import HybridLoss, HybridLossWeights
from lib.metrics import StrokeAccuracy
from lib.training import hybrid_step, loading_transforms, training_transforms
from lib.transforms.targets import HoldOutStrokesd

logger = logging.getLogger(__name__)

METRIC = "stroke_accuracy"


class CmFNetTrainer(BasicTrainTask):
    def __init__(
        self,
        model_dir: str,
        network: torch.nn.Module,
        labels: LabelSet,
        modalities: list[str],
        publish_path: str,
        patch_size: tuple[int, int, int],
        infer_roi_size: tuple[int, int, int],
        config: dict | None = None,
        val_interval: int = 1,
        description: str = "Train CmFNet from scribbles and final labels (hybrid supervision)",
    ):
        self._network = network
        self.label_set = labels
        self.modalities = modalities
        self.patch_size = tuple(patch_size)
        self.infer_roi_size = tuple(infer_roi_size)
        self._published = publish_path
        defaults = {
            "max_epochs": 20,
            "learning_rate": 1e-3,
            "train_batch_size": 1,
            "num_samples": 4,
            "modality_dropout": 0.2,
            "loss": {},
            "dataset": "CacheDataset",
            "dataloader": "ThreadDataLoader",
            "multi_gpu": False,
            "val_split": 0.0,
            # MLflow dropped its file store, MONAI Label's default; enable with a sqlite:// tracking_uri
            "tracking": "None",
        }
        super().__init__(
            model_dir=model_dir,
            description=description,
            config={**defaults, **(config or {})},
            amp=False,  # the iteration below uses autocast itself on CUDA
            publish_path=None,  # published atomically in finalize(), see module docstring
            labels=labels.classes,
            val_interval=val_interval,
        )

    # ---- data ----------------------------------------------------------------------------------
    def pre_process(self, request, datastore: Datastore):
        """Every image with a `final` label (dense) or else scribbles, with its label file."""
        datalist = []
        for image_id in datastore.list_images():
            for tag, dense in ((DefaultLabelTag.FINAL.value, True), (SCRIBBLES_TAG, False)):
                label = datastore.get_label_uri(image_id, tag)
                if label and os.path.exists(label):
                    datalist.append({"image": datastore.get_image_uri(image_id), "label": label, "dense": dense})
                    break
        if not datalist:
            raise InvalidInput("nothing to train on: no image has scribbles or a final label")
        logger.info(f"Training on {len(datalist)} cases ({sum(d['dense'] for d in datalist)} with dense labels)")
        return datalist

    def partition_datalist(self, context: Context, shuffle=False):
        """Validation uses the held-out strokes of the same cases (see HoldOutStrokesd)."""
        return context.datalist, context.datalist

    def train_pre_transforms(self, context: Context):
        num_samples = int(context.request["num_samples"])
        return training_transforms(self.modalities, self.label_set.num_classes, self.patch_size, num_samples)

    def val_pre_transforms(self, context: Context):
        return [*loading_transforms(self.modalities, self.label_set.num_classes), HoldOutStrokesd("validation")]

    def train_post_transforms(self, context: Context):
        return [Activationsd(keys="pred", softmax=True), AsDiscreted(keys="pred", argmax=True)]

    # ---- model, loss, iteration ---------------------------------------------------------------
    def network(self, context: Context):
        return self._network

    def optimizer(self, context: Context):
        return torch.optim.AdamW(context.network.parameters(), lr=float(context.request["learning_rate"]))

    def loss_function(self, context: Context):
        return HybridLoss(HybridLossWeights.from_dict(context.request.get("loss") or {}))

    def lr_scheduler_handler(self, context: Context):
        return None

    def load_path(self, output_dir, pretrained=True):
        """Fine-tune from the published model when there is one."""
        return self._published if pretrained and os.path.exists(self._published) else None

    def train_iteration_update(self, context: Context):
        loss_function = self.loss_function(context)
        p_drop = float(context.request["modality_dropout"])

        def iteration(engine, batch):
            output, loss, terms = hybrid_step(
                engine.network,
                engine.optimizer,
                loss_function,
                batch,
                engine.state.iteration,
                p_drop,
                engine.state.device,
            )
            label = batch["label"].to(engine.state.device)
            return {"label": label, "pred": output.fused.float(), "loss": loss.item(), **terms}

        return iteration

    def val_iteration_update(self, context: Context):
        def iteration(engine, batch):
            image = batch["image"].to(engine.state.device)
            present = batch["present"].to(engine.state.device)
            engine.network.eval()
            with torch.no_grad():
                pred = engine.inferer(image, engine.network, present=present)
            return {"image": image, "label": batch["label"].to(engine.state.device), "pred": pred}

        return iteration

    def train_inferer(self, context: Context):
        return None  # the iteration calls the network itself

    def val_inferer(self, context: Context):
        return SlidingWindowInferer(roi_size=self.infer_roi_size, sw_batch_size=1, overlap=0.25)

    def _stroke_accuracy(self):
        return IgniteMetricHandler(
            metric_fn=StrokeAccuracy(self.label_set.num_classes + 1),
            output_transform=from_engine(["pred", "label"]),
        )

    def train_key_metric(self, context: Context):
        return {f"train_{METRIC}": self._stroke_accuracy()}

    def val_key_metric(self, context: Context):
        return {f"val_{METRIC}": self._stroke_accuracy()}

    # ---- publication ----------------------------------------------------------------------------
    def finalize(self, context: Context):
        super().finalize(context)
        if context.local_rank != 0:
            return
        best = Path(context.output_dir) / self._key_metric_filename
        engine = context.evaluator or context.trainer
        # attached last, so it runs after the CheckpointSaver has written this epoch's best model
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: publish_atomically(best, Path(self._published)))


def publish_atomically(source: Path, target: Path) -> None:
    """Copy `source` over `target` so that readers see the old file or the new one, never a part."""
    if not source.exists():
        return
    if target.exists() and filecmp.cmp(source, target, shallow=False):
        return
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    logger.info(f"New model published: {source} => {target}")
