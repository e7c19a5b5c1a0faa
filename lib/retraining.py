"""Retraining on its own when annotations change (nothing in MONAI Label does this).

`request()` marks new annotations. A background thread starts a training run once the
marks are `delay` seconds old and no run is going; marks that arrive during a run start
exactly one more run after it, never a growing queue. A mark is also kept in a file until its
run has started, so a retrain queued when the server stops is started after a restart. Runs go through MONAI Label's own
background train task (a subprocess), so inference keeps answering, `/train` shows them
and `DELETE /train` stops them.
"""

import logging
import threading
import time
from pathlib import Path

from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import tasks

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0


def training_in_progress() -> bool:
    return any(task["status"] in ("SUBMITTED", "RUNNING") for task in tasks("train"))


class AutoRetrainer:
    def __init__(self, model: str, delay: float, params: dict, marker: Path):
        self.model = model
        self.delay = delay
        self.params = params
        self.marker = Path(marker)
        self._pending_since: float | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def pending(self) -> bool:
        """True when a retrain was asked for and has not started (also across a restart)."""
        return self.marker.exists()

    def request(self, at_once: bool = False) -> None:
        """New annotations: train on them soon (`delay` seconds on, to batch further saves), or `at_once`
        (annotations stored before the server started, which no save will follow)."""
        with self._lock:
            if self._pending_since is None:
                self._pending_since = time.monotonic() - (self.delay if at_once else 0.0)
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                self.marker.touch()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="auto-retrain", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                due = self._pending_since is not None and time.monotonic() - self._pending_since >= self.delay
                start = due and not training_in_progress()
                if start:
                    self._pending_since = None
                    self.marker.unlink(missing_ok=True)
            if not start:
                time.sleep(POLL_SECONDS)
                continue
            logger.info(f"New annotations: starting a {self.model} training run {self.params}")
            try:
                task, detail = AsyncTask.run("train", request={"model": self.model}, params=dict(self.params))
            except Exception:
                logger.exception("Could not start the training run")
                task, detail = None, "error"
            if task is None:  # another run started meanwhile: keep the marks for after it
                logger.info(f"Training not started ({detail}); trying again after the current run")
                self.request()
