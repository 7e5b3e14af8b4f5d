"""Builds on a thread pool: concurrent requests for one image share one build."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from ..builder import Builder, BuildJob

log = logging.getLogger(__name__)


class ThreadBuildQueue:
    def __init__(self, builder: Builder, workers: int) -> None:
        self.builder = builder
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="build")
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def build(self, job: BuildJob, wait: float) -> bool:
        with self._lock:
            future = self._running.get(job.key)
            if future is None:
                future = self.pool.submit(self.builder.run, job)
                self._running[job.key] = future
                future.add_done_callback(lambda _, key=job.key: self._done(key))
        try:
            future.result(timeout=wait)
        except FutureTimeout:
            return False
        return True

    def _done(self, key: str) -> None:
        with self._lock:
            self._running.pop(key, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
