"""CmFNet Label: the MONAI Label app.

`lib` (at the repository root) is importable because the project is installed in
editable mode (`make setup`); see pyproject.toml.

Besides wiring the models, the app keeps what no client stores: the strokes of a
scribbles request go into the datastore before the task answers, and any stored
annotation starts a background training run (`--conf auto_train true|false`,
`auto_train_delay` seconds, `auto_train_minutes` per run).
"""

import importlib
import inspect
import logging
import os
import pkgutil
from pathlib import Path

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType

import lib.configs
from lib.batch_infer import CmfnetBatchInfer
from lib.datastore import SCRIBBLES_TAG, CmfnetDatastore
from lib.dicomweb.datastore import dicomweb_datastore
from lib.dicomweb.pacs_sync import PacsSync, start_pacs_sync
from lib.labels import LabelSet
from lib.retraining import AutoRetrainer
from lib.scribbles.request import prepare_scribbles_request
from lib.server import install
from lib.viewer import serve_viewer
from lib.workers import WorkerPool

logger = logging.getLogger(__name__)


def available_configs() -> dict[str, type[TaskConfig]]:
    """Model name -> TaskConfig class, one per module of lib/configs (the module's file name)."""
    configs = {}
    for module_info in pkgutil.iter_modules(lib.configs.__path__):
        module = importlib.import_module(f"lib.configs.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, TaskConfig) and cls is not TaskConfig and cls.__module__ == module.__name__:
                configs[module_info.name] = cls
    return configs


class CmFNetLabelApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        configs = available_configs()
        names = [m.strip() for m in conf.get("models", "cmfnet").split(",") if m.strip()]
        unknown = sorted(set(names) - set(configs))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown} in --conf models; available: {sorted(configs)}")

        self.model_dir = os.path.join(app_dir, "model")
        self.models: dict[str, TaskConfig] = {}
        for name in names:
            config = configs[name]()
            config.init(name, self.model_dir, conf, None)
            self.models[name] = config
        # every model of this app shares one label set and modalities (the datastore checks uploads with them)
        first = next(iter(self.models.values()))
        self.label_set = LabelSet(first.labels)
        self.companions = first.modalities[1:]
        # inference off the event loop (lib.server)
        self.model_workers = WorkerPool(first.settings.infer_workers, first.settings.infer_queue)
        self.retrainers = {}
        if first.settings.auto_train:
            budget = {"max_minutes": first.settings.auto_train_minutes}
            self.retrainers = {
                name: AutoRetrainer(
                    name, first.settings.auto_train_delay, budget, Path(self.model_dir) / f"{name}.pending"
                )
                for name in names
            }
        self.pacs_sync: PacsSync | None = None

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="CmFNet Label",
            description="Cross-modal (CT + MR) segmentation trained from scribbles",
            version="0.1.0",
            # names in id order, as MONAI Label's own apps list them: OHIF's panel appends to this list
            # (a name -> id map breaks it); each model's "labels" in /info keeps the name -> id map
            labels=self.label_set.names,
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return CmfnetDatastore(
            self.studies,
            labels=self.label_set,
            companions=self.companions,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _init_dicomweb_datastore(self):
        # MONAI Label's own would download dcmqi and find no companion series; see lib/dicomweb
        return dicomweb_datastore(self.studies, self.label_set, self.companions)

    def init_batch_infer(self):
        return CmfnetBatchInfer()

    def init_infers(self):
        infers = {}
        for config in self.models.values():
            infers.update(config.infer())
        return infers

    def init_trainers(self):
        return {name: config.trainer() for name, config in self.models.items()}

    def infer(self, request, datastore=None):
        task = self._infers.get(request.get("model"))
        if task is not None and task.type == InferType.SCRIBBLES:
            request = prepare_scribbles_request(request, self.datastore(), self.label_set)
            if request["strokes_stored"]:
                self._annotations_changed()
        elif task is not None and self._is_case(request.get("image")):
            # a case with stored strokes is answered with its strokes honoured (lib.infers.cmfnet)
            request = {**request, "strokes": self.datastore().scribbles(request["image"])}
        return super().infer(request, datastore)

    def _is_case(self, image) -> bool:
        return isinstance(image, str) and self.datastore().has_image(image)

    def on_save_label(self, image_id, label_id):
        self._annotations_changed()
        return super().on_save_label(image_id, label_id)

    def on_init_complete(self):
        super().on_init_complete()
        install_server_guard(self)
        serve_viewer()
        name, config = next(iter(self.models.items()))
        self.pacs_sync = start_pacs_sync(self, name, config.path, config.settings.seg_poll_interval)
        due = [
            name
            for name, retrainer in self.retrainers.items()
            if retrainer.pending() or (not os.path.exists(self.models[name].path) and self._has_annotations())
        ]
        if due:
            logger.info(f"Annotations not yet learned by {due} (no published model, or a retrain was queued)")
            for name in due:
                self.retrainers[name].request(at_once=True)

    def info(self):
        info = {**super().info(), "model_workers": self.model_workers.status()}
        if self.pacs_sync:
            info["pacs"] = self.pacs_sync.status()
        return info

    def _has_annotations(self) -> bool:
        datastore = self.datastore()
        tags = (SCRIBBLES_TAG, DefaultLabelTag.FINAL.value)
        return any(datastore.get_label_uri(image, tag) for image in datastore.list_images() for tag in tags)

    def _annotations_changed(self):
        for retrainer in self.retrainers.values():
            retrainer.request()


def install_server_guard(instance: CmFNetLabelApp) -> None:
    """Guard, routes and CORS policy of lib.server on MONAI Label's web app (only the server has one)."""
    from monailabel.app import app

    install(app, instance, instance.model_workers)
