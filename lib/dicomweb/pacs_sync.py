"""The scribble loop through the PACS, for OHIF users: scribble SEGs in, result SEGs out.

- **Discovery.** Every `seg_poll_interval` seconds (`--conf`, default 10; 0 turns polling off)
  QIDO lists the PACS's SEG series; each instance of a scribble series (lib.dicomweb.seg_scribbles)
  not seen before is imported, oldest first. `POST /pacs/import?study=UID` imports the scribble
  SEGs of one study at once, again if they were already (importing is idempotent).
- **Record.** What was imported or skipped, and why, is logged, kept in `<cache>/pacs_sync.json`
  (a restart does not redo it) and shown in `/info` under `pacs`. A skipped SEG stores nothing.
- **Retraining.** Strokes that changed the stored scribbles call `on_new_strokes` (the app's
  background retraining, which coalesces requests: lib/retraining.py).
- **Results.** When a training run has ended (MONAI Label's train task DONE, none going) and the
  published model file is newer than the last one results were written for, the model's
  segmentation of every annotated CT series (stored scribbles or a `final` label) goes into the
  PACS as a new SEG series "CmFNet result <model time>" (lib.dicomweb.result_seg). `POST /pacs/results?study=UID` does
  the same for the CT series of any study, now.
"""

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from fastapi import APIRouter, Depends
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.async_tasks.utils import tasks
from pydicom.dataset import Dataset

from lib.datastore import SCRIBBLES_TAG
from lib.dicomweb.datastore import CmfnetDicomWebDatastore
from lib.dicomweb.result_seg import result_description, store_result_seg
from lib.dicomweb.seg_reader import SegError
from lib.dicomweb.seg_scribbles import import_scribble_seg, is_scribble_series
from lib.retraining import training_in_progress

logger = logging.getLogger(__name__)

SERIES_FIELDS = ["StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription", "Modality"]
RECENT = 20  # records shown in /info


class PacsSync:
    def __init__(self, app, datastore, label_set, model: str, model_path: str, on_new_strokes: Callable[[], None]):
        self.app = app
        self.datastore = datastore
        self.label_set = label_set
        self.model = model
        self.model_path = Path(model_path)
        self.on_new_strokes = on_new_strokes
        self.interval = 0.0
        self.last_poll: str | None = None
        self._lock = threading.Lock()  # the state and its file
        self._import_lock = threading.Lock()  # one import at a time: the poll thread and POST /pacs/import
        self._runs_seen: set[str] = set()  # training runs (task ids) already answered with results
        self._state_file = datastore.cache_folder / "pacs_sync.json"
        self._state = {"segs": {}, "results": [], "model_mtime": self._model_mtime()}
        if self._state_file.exists():
            self._state.update(json.loads(self._state_file.read_text()))

    def start(self, interval: float) -> None:
        """Poll every `interval` seconds in a background thread (0: never)."""
        self.interval = interval
        if interval > 0:
            threading.Thread(target=self._run, name="pacs-sync", daemon=True).start()

    def poll(self) -> list[dict]:
        """Import every scribble SEG instance not seen before; the new records."""
        return self._import(self._scribble_series({}), again=False)

    def import_study(self, study_uid: str) -> list[dict]:
        """Import (again) every scribble SEG instance of a study; their records."""
        return self._import(self._scribble_series({"StudyInstanceUID": study_uid}), again=True)

    def write_results_if_new_model(self) -> list[dict]:
        """After a training run that published a new model: result SEGs of the annotated CT series."""
        if training_in_progress():
            return []
        finished = {task["id"] for task in tasks("train") if task["status"] == "DONE"} - self._runs_seen
        if not finished:
            return []
        self._runs_seen |= finished
        mtime = self._model_mtime()
        if mtime is None or mtime == self._state["model_mtime"]:
            return []  # the run published nothing new
        self._state["model_mtime"] = mtime
        self._save()
        annotated = [image for image in self.datastore.cached_images() if self._annotated(image)]
        logger.info(f"New {self.model} model: storing its results for {len(annotated)} annotated series in the PACS")
        return [self.write_result(image) for image in annotated]

    def write_study_results(self, study_uid: str) -> list[dict]:
        """Result SEGs of the CT series of a study, now."""
        return [self.write_result(image) for image in self.datastore.study_images(study_uid)]

    def write_result(self, image_id: str) -> dict:
        """The published model's segmentation of a CT series, stored in the PACS as a new SEG series."""
        mtime = self._model_mtime()
        record = {"image": image_id, "description": result_description(mtime or 0), "time": _now()}
        try:
            result = self.app.infer({"model": self.model, "image": image_id})
            try:
                record["series"] = store_result_seg(self.datastore, image_id, result["label"], record["description"])
            finally:
                os.unlink(result["label"])
        except Exception as error:
            logger.exception(f"Result SEG for series {image_id} not stored")
            record["error"] = str(getattr(error, "detail", error))
        with self._lock:
            self._state["results"] = (self._state["results"] + [record])[-RECENT:]
            self._save()
        logger.info(f"Result SEG: {record}")
        return record

    def status(self) -> dict:
        segs = list(self._state["segs"].values())
        count = {s: sum(r["status"] == s for r in segs) for s in ("imported", "unchanged", "skipped")}
        return {
            "poll_interval": self.interval,
            "last_poll": self.last_poll,
            **count,
            "recent": segs[-RECENT:],
            "results": self._state["results"],
        }

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.poll()
                self.write_results_if_new_model()
            except Exception:
                logger.exception("PACS sync failed; trying again at the next poll")

    def _scribble_series(self, filters: dict) -> list[Dataset]:
        found = self.datastore.client.search_for_series(
            search_filters={"Modality": "SEG", **filters}, fields=SERIES_FIELDS
        )
        self.last_poll = _now()
        return [s for s in map(Dataset.from_json, found) if is_scribble_series(str(s.get("SeriesDescription", "")))]

    def _import(self, series: list[Dataset], again: bool) -> list[dict]:
        with self._import_lock:
            records = self._import_instances(series, again)
        if any(r["status"] == "imported" for r in records):
            self.on_new_strokes()
        return records

    def _import_instances(self, series: list[Dataset], again: bool) -> list[dict]:
        client = self.datastore.client
        instances = []
        for s in series:
            study, uid = str(s.StudyInstanceUID), str(s.SeriesInstanceUID)
            for found in client.search_for_instances(study, uid, fields=["SOPInstanceUID"]):
                sop = str(Dataset.from_json(found).SOPInstanceUID)
                if again or sop not in self._state["segs"]:
                    instances.append(client.retrieve_instance(study, uid, sop))
        instances.sort(key=lambda ds: (str(ds.get("ContentDate", "")), str(ds.get("ContentTime", ""))))
        return [self._import_instance(ds) for ds in instances]

    def _import_instance(self, seg: pydicom.Dataset) -> dict:
        record = {
            "study": str(seg.get("StudyInstanceUID", "")),
            "series": str(seg.get("SeriesInstanceUID", "")),
            "instance": str(seg.get("SOPInstanceUID", "")),
            "description": str(seg.get("SeriesDescription", "")),
            "time": _now(),
        }
        try:
            done = import_scribble_seg(seg, self.datastore, self.label_set)
            record.update(status="imported" if done.changed else "unchanged", image=done.image, voxels=done.voxels)
            logger.info(f"Scribble SEG {record['series']}: {record['status']}, {done.voxels} voxels for {done.image}")
        except SegError as error:
            record.update(status="skipped", reason=str(error))
            logger.warning(f"Scribble SEG {record['series']} (instance {record['instance']}) skipped: {error}")
        with self._lock:
            self._state["segs"].pop(record["instance"], None)  # the latest record last
            self._state["segs"][record["instance"]] = record
            self._save()
        return record

    def _annotated(self, image_id: str) -> bool:
        return any(self.datastore.get_label_uri(image_id, tag) for tag in (SCRIBBLES_TAG, DefaultLabelTag.FINAL.value))

    def _model_mtime(self) -> float | None:
        return self.model_path.stat().st_mtime if self.model_path.exists() else None

    def _save(self) -> None:
        partial = self._state_file.with_suffix(".partial")
        partial.write_text(json.dumps(self._state, indent=1))
        os.replace(partial, self._state_file)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def pacs_router(sync: PacsSync) -> APIRouter:
    """Mutating routes (POST) of the PACS loop."""
    annotator = [Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))]
    router = APIRouter(prefix="/pacs", tags=["PACS"])

    @router.post("/import", dependencies=annotator, summary="Import a study's scribble SEG series now (idempotent)")
    def import_study(study: str):
        return sync.import_study(study)

    @router.post("/results", dependencies=annotator, summary="Store the model's result for a study's CT as SEG")
    def study_results(study: str):
        return sync.write_study_results(study)

    return router


def start_pacs_sync(app, model: str, model_path: str, interval: float) -> PacsSync | None:
    """For an app on a DICOMweb datastore: start the loop and add its routes to the server; else None."""
    datastore = app.datastore()
    if not isinstance(datastore, CmfnetDicomWebDatastore):
        return None
    from monailabel.app import app as server  # the server's FastAPI app (imported only in the server)

    sync = PacsSync(app, datastore, app.label_set, model, model_path, app._annotations_changed)
    sync.start(interval)
    server.include_router(pacs_router(sync))
    return sync
