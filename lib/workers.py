"""Model work off the event loop: a worker pool with a bounded queue.

MONAI Label's `/infer` endpoint is `async` and runs the whole inference on the server's
event loop, so one inference holds up every other request (`/info`, datastore reads) until
it ends. The app's routes (lib.server.routes) hand inference and scribble requests to this
pool instead and only await them. At most `workers` run at once and `queue` more wait; past
that a request is refused at once with 503 and a `Retry-After` estimated from recent run
times, instead of piling up until clients time out.
"""

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from monailabel.utils.others.generic import handle_torch_linalg_multithread

from lib.errors import Busy

# weight of the newest run in the running mean of run times (for Retry-After)
SMOOTHING = 0.2


class WorkerPool:
    """`workers` threads and `queue` waiting places (settings `infer_workers` and `infer_queue`)."""

    def __init__(self, workers: int, queue: int):
        if workers < 1 or queue < 0:
            raise ValueError(f"a worker pool needs workers >= 1 and queue >= 0, got {workers} and {queue}")
        self.workers = workers
        self.capacity = workers + queue
        # MONAI Label's own workaround for CUDA linear algebra first used in a thread
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="model-worker", initializer=handle_torch_linalg_multithread, initargs=(None,)
        )
        self._lock = threading.Lock()
        self._in_flight = 0
        self._mean_seconds: float | None = None

    def status(self) -> dict[str, int]:
        """For `/info`: how many requests are running or waiting, of how many places."""
        return {"workers": self.workers, "in_flight": self._in_flight, "capacity": self.capacity}

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on a worker; Busy (503) at once when `capacity` requests are in flight."""
        with self._lock:
            if self._in_flight >= self.capacity:
                retry_after = self._retry_after()
                raise Busy(
                    f"the model workers are busy ({self._in_flight} requests running or waiting, "
                    f"{self.workers} at a time): retry in {retry_after} s",
                    retry_after,
                )
            self._in_flight += 1
        future = self._executor.submit(self._timed, function, *args)
        future.add_done_callback(self._finished)  # also when cancelled before it ran
        return await asyncio.wrap_future(future)

    def _timed(self, function: Callable[..., Any], *args: Any) -> Any:
        start = time.monotonic()
        try:
            return function(*args)
        finally:
            seconds = time.monotonic() - start
            with self._lock:
                mean = self._mean_seconds
                self._mean_seconds = seconds if mean is None else (1 - SMOOTHING) * mean + SMOOTHING * seconds

    def _finished(self, _: Future) -> None:
        with self._lock:
            self._in_flight -= 1

    def _retry_after(self) -> int:
        """Seconds until a place is likely free: the waiting requests' share of the workers' time."""
        mean = self._mean_seconds or 1.0
        return max(1, math.ceil(mean * (self._in_flight - self.workers + 1) / self.workers))
