"""This app's versions of the MONAI Label routes that run models or take JSON form fields.

Same paths, parameters and answers as MONAI Label 0.8.5's, whose endpoint functions
(`monailabel.endpoints.*`) they call after checks of their own; they are put in front of
MONAI Label's by lib.server.install and hidden from the API docs (which show MONAI Label's).

- `POST /infer/{model}` (segmentation and scribbles) and `POST /batch/infer/{model}` with
  `run_sync` run on the model worker pool (lib.workers), off the event loop; 503 when it is full.
- Datastore writes are plain functions, which FastAPI runs in its thread pool: they never
  wait behind inference, and never hold up the event loop.
- Refused with a 4xx and a message before anything runs: JSON form fields (`params`, `info`)
  that do not parse or are not an object (422); an unknown model, strategy or scoring method
  (404); inference without an image, or DICOM SEG output without a DICOMweb datastore (422);
  `params` that would set the request's own `image`, `model` or `label` (server paths
  otherwise; 422); results to be saved under a tag that holds human annotations (409; the
  datastore refuses them too); train parameters outside their bounds, or an unknown trainer.
"""

import json
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, UploadFile
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.endpoints import activelearning as activelearning_endpoint
from monailabel.endpoints import batch_infer as batch_endpoint
from monailabel.endpoints import datastore as datastore_endpoint
from monailabel.endpoints import infer as infer_endpoint
from monailabel.endpoints import scoring as scoring_endpoint
from monailabel.endpoints import train as train_endpoint
from monailabel.endpoints.user.auth import User, get_current_user
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType

from lib.errors import InvalidInput, NotFound
from lib.names import check_name
from lib.settings import TrainSettings
from lib.workers import WorkerPool

# keys of an inference request that name files on the server: set by the route, never by params
RESERVED_PARAMS = ("image", "model", "label")
# who MONAI Label records as the author of a write (its default user when authentication is off)
CurrentUser = Annotated[User, Depends(get_current_user)]


def json_object(text: str | None, field: str) -> dict[str, Any]:
    """A JSON form field's object; InvalidInput (422) when it is not one."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{field} is not valid JSON ({e}): send a JSON object like {{}}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object, got {type(value).__name__}")
    return value


def build_router(instance: MONAILabelApp, pool: WorkerPool) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def known(name: str, registry: dict, what: str) -> None:
        if name not in registry:
            raise NotFound(f"no {what} '{name}' on this server; its {what}s are {sorted(registry)}")

    def known_model(model: str) -> None:
        known(model, instance._infers, "model")  # MONAI Label's own registry of the app's infer tasks

    def check_output_tag(params: dict[str, Any]) -> None:
        """Results saved as labels must go under a name and never where human annotations are."""
        tag = check_name(params.get("label_tag", DefaultLabelTag.ORIGINAL.value), "label_tag")
        instance.datastore().check_model_output_tag(tag)

    @router.post("/infer/{model}")
    async def infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: Annotated[str, Form()] = "{}",
        file: Annotated[UploadFile | None, File()] = None,
        label: Annotated[UploadFile | None, File()] = None,
        output: infer_endpoint.ResultType | None = None,
    ):
        known_model(model)
        if not (image or file or session_id):
            raise InvalidInput("name the image (?image=ID), upload it (field `file`) or give a session_id")
        if output == infer_endpoint.ResultType.dicom_seg and not isinstance(instance.datastore(), DICOMWebDatastore):
            raise InvalidInput("output=dicom_seg needs a DICOMweb datastore (a PACS); ask for image or json")
        values = json_object(params, "params")
        reserved = sorted(set(RESERVED_PARAMS) & set(values))
        if reserved:
            raise InvalidInput(f"params may not set {reserved}: name the image with ?image=ID and send files as fields")
        if values.get("save_label"):
            check_output_tag(values)
        return await pool.run(
            infer_endpoint.run_inference, background_tasks, model, image, session_id, params, file, label, output
        )

    @router.post("/batch/infer/{model}")
    async def batch_infer(
        model: str,
        images: BatchInferImageType | None = BatchInferImageType.IMAGES_ALL,
        params: dict | None = None,
        run_sync: bool | None = False,
    ):
        known_model(model)
        params = dict(params or {})
        if "model" in params:
            raise InvalidInput("params may not set 'model': it is the path's")
        if isinstance(params.get("images"), list):
            for image_id in params["images"]:
                check_name(image_id, "image id")
        check_output_tag(params)
        if run_sync:
            return await pool.run(batch_endpoint.run, model, images, params, run_sync)
        return batch_endpoint.run(model, images, params, run_sync)

    @router.post("/activelearning/{strategy}")
    def next_sample(strategy: str, user: CurrentUser, params: dict | None = None):
        known(strategy, instance._strategies, "strategy")
        return activelearning_endpoint.sample(strategy, params, user.username)

    @router.post("/scoring/{method}")
    def run_scoring(method: str, params: dict | None = None, run_sync: bool | None = False):
        known(method, instance._scoring_methods, "scoring method")
        return scoring_endpoint.run_method(method, params, run_sync)

    def train_settings(model: str, params: dict | None) -> None:
        """Every train parameter checked with its bounds (lib.settings) before a run is started."""
        known(model, instance._trainers, "trainer")
        TrainSettings.from_request(dict(params or {}), instance._trainers[model].defaults)

    @router.post("/train/{model}")
    def train(model: str, params: dict | None = None, run_sync: bool | None = False, enqueue: bool | None = False):
        train_settings(model, params)
        return train_endpoint.run_model(model, params, run_sync, enqueue)

    @router.post("/train/")
    def train_all(params: dict | None = None, run_sync: bool | None = False):
        for model in instance._trainers:
            train_settings(model, (params or {}).get(model))
        return train_endpoint.run(params, run_sync)

    @router.put("/datastore/image")
    @router.put("/datastore/")
    def add_image(
        background_tasks: BackgroundTasks,
        file: Annotated[UploadFile, File()],
        user: CurrentUser,
        image: str | None = None,
        params: Annotated[str, Form()] = "{}",
    ):
        json_object(params, "params")
        return datastore_endpoint.add_image(background_tasks, image, params, file, user.username)

    @router.put("/datastore/label")
    def save_label(
        background_tasks: BackgroundTasks,
        image: str,
        label: Annotated[UploadFile, File()],
        user: CurrentUser,
        params: Annotated[str, Form()] = "{}",
        tag: str = DefaultLabelTag.FINAL.value,
    ):
        json_object(params, "params")
        return datastore_endpoint.save_label(background_tasks, image, params, tag, label, user.username)

    @router.put("/datastore/image/info")
    def update_image_info(image: str, user: CurrentUser, info: Annotated[str, Form()] = "{}"):
        json_object(info, "info")
        return datastore_endpoint.update_image_info(image, info, user.username)

    @router.put("/datastore/label/info")
    def update_label_info(label: str, tag: str, user: CurrentUser, info: Annotated[str, Form()] = "{}"):
        json_object(info, "info")
        return datastore_endpoint.update_label_info(label, tag, info, user.username)

    @router.put("/datastore/updatelabelinfo")
    def update_label_info_deprecated(label: str, tag: str, user: CurrentUser, params: Annotated[str, Form()] = "{}"):
        json_object(params, "params")
        return datastore_endpoint.update_label_info(label, tag, params, user.username)

    return router
