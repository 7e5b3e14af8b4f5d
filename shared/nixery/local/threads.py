"""Builds on a thread pool: concurrent requests for one image share one build."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial

from ..builder import Builder
from ..job import BuildJob
from ..state import Failure, Published, State


class ThreadBuildQueue:
    def __init__(self, builder: Builder, state: State, workers: int) -> None:
        self.builder = builder
        self.state = state
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="build")
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def build(self, job: BuildJob, wait: float) -> Published | Failure | None:
        with self._lock:
            future = self._running.get(job.key)
            started = future is None
            if future is None:
                future = self.pool.submit(self.builder.run, job)
                self._running[job.key] = future
        if started:
            # Outside the lock: a build that has ended already runs the callback right here.
            future.add_done_callback(partial(self._done, job.key))
        try:
            future.result(timeout=wait)  # a transient failure is raised here
        except FutureTimeout:
            return None
        outcome = self.state.status(job.key)
        if isinstance(outcome, Published | Failure):
            return outcome
        raise RuntimeError(f"build {job.key} ended without an outcome")

    def _done(self, key: str, future: Future[None]) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
