"""The `cmfnet` train task: the one recipe (lib.training) inside MONAI Label's BasicTrainTask.

BasicTrainTask gives the request handling, the (multi-GPU) launch, the ignite engines and the
stats file behind `/info`. What it cannot express by configuration is changed here:

- parameters are checked by lib.settings.TrainSettings (a 4xx names a bad one);
- the datalist is every image with a `final` label or scribbles (the datastore's own `datalist()`
  lists `final` only), and a plan (lib.planning) is made from their spacings and sizes, or the
  published model's plan is kept when it fits, so fine-tuning goes on;
- the run is bounded by steps and minutes, the average of its weights (lib.training.weight_average) is
  validated on held-out strokes, and every better one is published at once (lib.trainers.budget); the
  deterministic data (grids, pseudo labels) is cached on disk between runs, keyed by the files'
  modification times, so a retrain after new strokes on one case propagates that case only;
- with `multi_gpu` (one process per GPU, BasicTrainTask's own spawn) or under torchrun
  (lib.train_distributed) every process trains the same network with DDP on its share of the cases,
  and all of them stop at the same step (lib.distributed); rank 0 publishes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import SimpleITK as sitk
import torch
from ignite.engine import Events
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import IgniteMetricHandler, from_engine
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from torch.utils.data import ConcatDataset, DataLoader, Subset

from lib.datastore import SCRIBBLES_TAG
from lib.distributed import DistributedNetwork, RankSummary, from_rank0, rank_share, unwrap
from lib.errors import InvalidInput
from lib.inference import build_network, sliding_window_inferer
from lib.labels import LabelSet
from lib.losses.hybrid import HybridLoss
from lib.metrics import StrokeAccuracy, WorstRegionDice
from lib.model_files import Publisher, UnreadableModel, read_model
from lib.planning import Plan, make_plan
from lib.settings import TrainSettings
from lib.trainers.budget import FIRST_MODEL_FLOORS, WORST_CLASS_ACCURACY, WORST_CLASS_DICE, RunBudget
from lib.training import (
    cached_training_transforms,
    hybrid_step,
    loading_transforms,
    optimizer_for,
    random_training_transforms,
    weight_average,
)
from lib.transforms.modalities import companion_path
from lib.transforms.targets import HoldOutStrokesd, PropagateHeldOutCased, split_cases

logger = logging.getLogger(__name__)

METRIC = "val_stroke_accuracy"
# what every process of a distributed run takes from rank 0, besides its cases
RANK0_KEYS = ("plan", "started_at", "run_id")
# processes that prepare the cases before a run (one propagation each at a time; memory grows with them)
PREPARE_WORKERS = 4


class CmFNetTrainer(BasicTrainTask):
    def __init__(
        self,
        model_dir: str,
        labels: LabelSet,
        modalities: list[str],
        publish_path: str,
        defaults: TrainSettings,
        preset: str = "auto",
        description: str = "Train CmFNet from scribbles and final labels (hybrid supervision)",
    ):
        self.label_set = labels
        self.modalities = modalities
        self.published = Path(publish_path)
        self.defaults = defaults
        self.preset = preset
        super().__init__(
            model_dir=model_dir,
            description=description,
            config={**defaults.model_dump(), "dataset": "PersistentDataset", "dataloader": "DataLoader"},
            amp=False,  # lib.training.hybrid_step and lib.inference autocast where lib.precision says
            labels=labels.classes,
            disable_meta_tracking=False,
        )
        # BasicTrainTask's epoch-based keys mean nothing here: a run is bounded by max_steps and max_minutes
        for key in ("max_epochs", "early_stop_patience", "val_split", "train_batch_size", "val_batch_size"):
            self._config.pop(key, None)

    # ---- request ----------------------------------------------------------------------------------
    def __call__(self, request, datastore: Datastore):
        request = self.run_request(request)
        gpus = torch.cuda.device_count()
        if request["multi_gpu"] and gpus < 2:
            logger.warning(f"multi_gpu is on but {gpus} CUDA device(s) are visible: training in one process")
        return super().__call__(request, datastore)

    def run_request(self, request: dict) -> dict:
        """A train request with its settings checked (lib.settings) and the keys this task fixes; the
        run's clock starts now."""
        settings = TrainSettings.from_request(request, self.defaults)
        return {
            **request,
            **settings.model_dump(),
            "started_at": time.time(),
            "max_epochs": 1,
            "train_batch_size": 1,
            "val_batch_size": 1,
            "dataset": "PersistentDataset",
            "dataloader": "DataLoader",
        }

    def pre_process(self, request, datastore: Datastore):
        """Every image with a `final` label (dense) or else scribbles; the plan goes into the request."""
        datalist = []
        for image_id in datastore.list_images():
            for tag, dense in ((DefaultLabelTag.FINAL.value, True), (SCRIBBLES_TAG, False)):
                label = datastore.get_label_uri(image_id, tag)
                if label and os.path.exists(label):
                    image = datastore.get_image_uri(image_id)
                    version = _version(image, label, self.modalities[1:])
                    item = {"case": image_id, "image": image, "label": label, "dense": dense, "version": version}
                    datalist.append(item)
                    break
        if not datalist:
            raise InvalidInput("nothing to train on: no image has scribbles or a final label")
        plan = self._plan(datalist, request)
        request["plan"] = plan.to_json()
        for item in datalist:
            item["plan"] = plan.describe()  # part of the cache key: another plan, another cache entry
        logger.info(f"Training on {len(datalist)} cases ({sum(d['dense'] for d in datalist)} with dense labels)")
        return datalist

    def _plan(self, datalist: list[dict], request: dict) -> Plan:
        num_classes = self.label_set.num_classes + 1
        if request["pretrained"]:
            try:
                _, plan = read_model(self.published)
                same = (plan.num_classes, plan.num_modalities, plan.network)
                if same == (num_classes, len(self.modalities), request["network"]):
                    logger.info(f"Keeping the published model's plan: {plan.describe()}")
                    return plan
            except UnreadableModel:
                pass
        spacings, shapes = zip(*(_geometry(item["image"]) for item in datalist), strict=True)
        device = "gpu" if torch.cuda.is_available() else "cpu"
        preset = self.preset if self.preset != "auto" else ("large" if device == "gpu" else "small")
        return make_plan(spacings, shapes, len(self.modalities), num_classes, device, preset, request["network"])

    def partition_datalist(self, context: Context, shuffle=False):
        """Validation on held-out strokes of the same cases, or from CASE_SPLIT_FROM cases on, on held-out
        cases (lib.transforms.targets.split_cases). Under DDP every process first takes rank 0's cases, plan
        and clock (under torchrun only rank 0 reads the datastore)."""
        if context.multi_gpu:
            shared = from_rank0({"datalist": context.datalist, **{k: context.request.get(k) for k in RANK0_KEYS}})
            context.datalist = shared.pop("datalist")
            context.request.update(shared)
            context.run_id = context.request["run_id"]
        train, validation = split_cases(context.datalist)
        if len(train) < len(context.datalist):
            logger.info(f"Validating on held-out case(s) {', '.join(d['case'] for d in validation)}")
        return train, validation

    # ---- data -------------------------------------------------------------------------------------
    def _plan_of(self, context: Context) -> Plan:
        return Plan.from_json(context.request["plan"])

    def train_pre_transforms(self, context: Context):
        plan = self._plan_of(context)
        k = self.label_set.num_classes
        return [
            *cached_training_transforms(plan, self.modalities, k, context.request["propagation"]),
            *random_training_transforms(plan, k, int(context.request["batch_size"])),
        ]

    def val_pre_transforms(self, context: Context):
        plan = self._plan_of(context)
        k = self.label_set.num_classes
        return [
            *loading_transforms(plan, self.modalities, k),
            HoldOutStrokesd("validation"),
            PropagateHeldOutCased(k, self.modalities[0], context.request["propagation"]),
        ]

    def _dataset(self, context, datalist, is_train, replace_rate=0.25):
        """This process's share of the cases under DDP. Deterministic transforms cached on disk across
        runs, keyed by the item (its files' versions) and by those transforms (training and validation
        items of one case differ)."""
        if context.multi_gpu:
            datalist = rank_share(datalist, context.local_rank, context.world_size)
        transforms = self._validate_transforms(
            self.train_pre_transforms(context) if is_train else self.val_pre_transforms(context)
        )
        cache = Path(self._model_dir) / "cache"
        return PersistentDataset(datalist, transforms, cache_dir=cache, hash_transform=pickle_hashing), datalist

    def train_data_loader(self, context, num_workers=0, shuffle=True):
        # one case per step; the crop takes `batch_size` patches from it
        dataset, datalist = self._dataset(context, context.train_datalist, is_train=True)
        logger.info(f"{context.local_rank} - Records for Training: {len(datalist)}")
        _prepare_in_parallel([dataset, context.evaluator.data_loader.dataset])
        return self._dataloader(context, dataset, 1, num_workers, shuffle)

    # ---- processes, devices, model, loss, iteration ------------------------------------------------
    def train(self, rank, world_size, request, datalist):
        """BasicTrainTask's. The processes it spawns for `multi_gpu` would each take every CPU thread (the
        data preparation runs on the CPU) and slow each other down: they share them out, unless
        OMP_NUM_THREADS says otherwise (torchrun sets it)."""
        if request["multi_gpu"] and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        return super().train(rank, world_size, request, datalist)

    def _device(self, context: Context):
        """Under DDP this process's GPU: BasicTrainTask's pick by rank, but under torchrun the GPU of its
        LOCAL_RANK (request `cuda_device`), since ranks count across nodes; the CPU without CUDA (gloo)."""
        if context.multi_gpu and not torch.cuda.is_available():
            return torch.device("cpu")
        if context.multi_gpu and "cuda_device" in context.request:
            device = torch.device("cuda", int(context.request["cuda_device"]))
            torch.cuda.set_device(device)
            return device
        return super()._device(context)

    def _create_network_and_optimizer(self, context: Context):
        """BasicTrainTask's, with DDP through DistributedNetwork: it averages the gradients of `forward_all`.
        Also the average of the weights that is validated and published (lib.training.weight_average)."""
        network = self.network(context).to(context.device)
        context.network = network
        optimizer = self.optimizer(context)
        if context.multi_gpu:
            network = DistributedNetwork(network, context.device)  # rank 0's weights in every process
            context.fine_tuning = from_rank0(context.fine_tuning)
        context.averaged = weight_average(unwrap(network))
        return network, optimizer

    def network(self, context: Context):
        plan = self._plan_of(context)
        network = build_network(plan)
        context.fine_tuning = False
        if context.request["pretrained"]:
            try:
                state, published_plan = read_model(self.published)
                if published_plan == plan:
                    network.load_state_dict(state)
                    context.fine_tuning = True
                    logger.info(f"Fine-tuning the published model {self.published.name}")
                else:
                    logger.info("The published model has another plan: training from scratch")
            except UnreadableModel as error:
                logger.info(f"Training from scratch ({error})")
            except RuntimeError as error:  # weights that do not fit the network
                logger.warning(f"The published weights do not fit ({error}): training from scratch")
        return network

    def optimizer(self, context: Context):
        return optimizer_for(context.network, float(context.request["learning_rate"]))

    def loss_function(self, context: Context):
        return HybridLoss(TrainSettings.model_validate(_settings_of(context.request)).loss)

    def train_iteration_update(self, context: Context):
        loss_function = self.loss_function(context)
        p_drop = float(context.request["modality_dropout"])
        spacing = self._plan_of(context).spacing

        def iteration(engine, batch):
            _, loss, terms = hybrid_step(
                engine.network,
                engine.optimizer,
                loss_function,
                batch,
                engine.state.iteration,
                p_drop,
                engine.state.device,
                spacing,
                balanced_strokes=context.budget.waiting_for_first_model,
            )
            context.averaged.update_parameters(unwrap(engine.network))
            return {"loss": loss.item(), **terms}

        return iteration

    def val_iteration_update(self, context: Context):
        inferer = self.val_inferer(context)

        def iteration(engine, batch):
            image = batch["image"].to(engine.state.device)
            present = batch["present"].to(engine.state.device)
            engine.network.eval()
            with torch.no_grad():
                pred = torch.softmax(inferer(image, engine.network, present=present), dim=1)
            return {
                "pred": pred,
                "label": batch["label"].to(engine.state.device),
                "regions": batch["pseudo"].to(engine.state.device),
            }

        return iteration

    def train_post_transforms(self, context: Context):
        return None  # the iteration returns losses only; nothing to post-process

    def val_inferer(self, context: Context):
        return sliding_window_inferer(self._plan_of(context), context.device)

    # ---- engines ----------------------------------------------------------------------------------
    def _create_evaluator(self, context: Context):
        evaluator = SupervisedEvaluator(
            device=context.device,
            val_data_loader=self.val_data_loader(context),
            network=context.averaged.module,
            key_val_metric={METRIC: self._stroke_accuracy("mean")},
            additional_metrics={
                WORST_CLASS_ACCURACY: self._stroke_accuracy("min"),
                WORST_CLASS_DICE: IgniteMetricHandler(
                    metric_fn=WorstRegionDice(self.label_set.num_classes + 1),
                    output_transform=from_engine(["pred", "regions"]),
                ),
            },
            iteration_update=self.val_iteration_update(context),
        )
        self._log_accuracy_by_class(evaluator, main=context.local_rank == 0)
        return evaluator

    def _log_accuracy_by_class(self, evaluator: SupervisedEvaluator, main: bool) -> None:
        """After every validation, each class's held-out stroke accuracy by name in the log: which class
        holds a first model back (a small one, a tumour on the demo, is usually the last to be learned).
        Logged rather than an engine metric: MONAI's stats, TensorBoard and MLflow handlers take scalars.
        Every process computes it (under DDP the metric gathers every rank's strokes); the main one logs."""
        names = ["background", *self.label_set.names]
        metric = StrokeAccuracy(len(names), "none")
        outputs = from_engine(["pred", "label"])
        evaluator.add_event_handler(Events.EPOCH_STARTED, lambda _: metric.reset())
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: metric(*outputs(engine.state.output)))

        @evaluator.on(Events.EPOCH_COMPLETED)
        def log(_):
            accuracy = metric.aggregate().tolist()
            if main:
                listed = ", ".join(f"{name} {value:.2f}" for name, value in zip(names, accuracy, strict=True))
                logger.info(f"Held-out stroke accuracy by class: {listed}")

    def _stroke_accuracy(self, reduction: str) -> IgniteMetricHandler:
        return IgniteMetricHandler(
            metric_fn=StrokeAccuracy(self.label_set.num_classes + 1, reduction),
            output_transform=from_engine(["pred", "label"]),
        )

    def _create_trainer(self, context: Context):
        settings = context.request
        trainer = SupervisedTrainer(
            device=context.device,
            max_epochs=1,
            epoch_length=int(settings["max_steps"]),
            train_data_loader=self.train_data_loader(context),
            network=context.network,
            optimizer=context.optimizer,
            loss_function=None,
            iteration_update=self.train_iteration_update(context),
        )
        plan = self._plan_of(context)
        network = unwrap(context.network)
        averaged = context.averaged.module
        context.budget = RunBudget(
            evaluator=context.evaluator,
            metric_name=METRIC,
            floors=FIRST_MODEL_FLOORS,
            iterate=network,
            publisher=Publisher(averaged, plan, self.published),
            stats_path=Path(self._stats_path),
            max_steps=int(settings["max_steps"]),
            max_seconds=float(settings["max_minutes"]) * 60,
            val_every=int(settings["val_every"]),
            peak_learning_rate=float(settings["learning_rate"]),
            started_at=float(settings["started_at"]),
            fine_tuning=context.fine_tuning,
            details={"run_id": context.run_id, "plan": plan.to_json(), "fine_tuning": context.fine_tuning},
            main=context.local_rank == 0,
        )
        context.budget.attach(trainer)
        if context.multi_gpu:
            RankSummary(network, context.local_rank, context.world_size).attach(trainer)
        return trainer

    def finalize(self, context: Context):
        """Publication and stats are RunBudget's (see lib.trainers.budget)."""


def _prepare_in_parallel(datasets: list[PersistentDataset]) -> None:
    """Compute the cached part of every item not yet in its dataset's disk cache before the run's first step,
    in up to PREPARE_WORKERS processes: a case's propagation is single-threaded and takes seconds (2.7 s a
    demo case on a 2-core CPU), and left to the first steps it runs one case at a time while the other cores
    wait. What the workers compute lands in the disk caches; their items (random crops) are thrown away."""
    items = ConcatDataset(
        [Subset(d, [i for i, item in enumerate(d.data) if not _is_cached(d, item)]) for d in datasets]
    )
    workers = min(len(items), torch.get_num_threads(), PREPARE_WORKERS)
    if workers < 2:
        return
    start = time.time()
    for _ in DataLoader(items, batch_size=None, num_workers=workers, collate_fn=_nothing):
        pass
    logger.info(f"Prepared {len(items)} item(s) in {workers} processes in {time.time() - start:.1f} s")


def _nothing(_item) -> None:
    return None


def _is_cached(dataset: PersistentDataset, item: dict) -> bool:
    """Whether `item`'s cache file exists, named as PersistentDataset._cachecheck names it (MONAI has no
    public call for this; were the naming to change, every item would be prepared again, as before)."""
    name = dataset.hash_func(item).decode("utf-8") + dataset.transform_hash
    return (Path(dataset.cache_dir) / f"{name}.pt").is_file()


def _settings_of(request: dict) -> dict:
    return {key: request[key] for key in TrainSettings.model_fields}


def _geometry(path: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Spacing (mm) and size of an image from its header alone (SimpleITK reads NIfTI, NRRD, MHA)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSpacing()), tuple(reader.GetSize())


def _version(image: str, label: str, companions: list[str]) -> str:
    """Modification times of a case's files: a new version (and cache entry) when any of them changes."""
    files = [Path(image), Path(label), *(companion_path(image, m) or Path("-") for m in companions)]
    return ",".join(str(f.stat().st_mtime_ns) if f.exists() else "-" for f in files)
