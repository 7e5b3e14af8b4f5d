"""Builds on a thread pool: concurrent requests for one image share one build."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial

from nixery.errors import BuildQueueFull
from nixery.job import BuildJob
from nixery.ports import BuildRunner, PublishedImages, never
from nixery.records import Failure, Published

# Seconds between looks at whether a waiting client is still there.
_GONE_POLL = 1.0


class ThreadBuildQueue:
    def __init__(
        self,
        builder: BuildRunner,
        images: PublishedImages,
        workers: int,
        max_queued: int | None = None,
    ) -> None:
        """``workers`` builds run at once and ``max_queued`` more may wait for a worker
        (NIXERY_BUILD_WORKERS, NIXERY_MAX_QUEUED_BUILDS; None: no limit)."""
        self.builder = builder
        self.images = images
        self.workers = workers
        self.max_queued = max_queued
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="build")
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def running(self, key: str) -> bool:
        with self._lock:
            return key in self._running

    def build(
        self, job: BuildJob, wait: float, gone: Callable[[], bool] = never
    ) -> Published | Failure | None:
        with self._lock:
            future = self._running.get(job.key)
            started = future is None
            if future is None:
                if self.max_queued is not None and len(self._running) >= (
                    self.workers + self.max_queued
                ):
                    raise BuildQueueFull(
                        f"{len(self._running)} builds are running or waiting, as many as this "
                        "registry allows; retry later"
                    )
                future = self.pool.submit(self.builder.run, job, time.time())
                self._running[job.key] = future
        if started:
            # Outside the lock: a build that has ended already runs the callback right here.
            future.add_done_callback(partial(self._done, job.key))
        deadline = time.monotonic() + wait
        while True:
            try:
                left = deadline - time.monotonic()
                future.result(timeout=max(0.0, min(_GONE_POLL, left)))  # transient: raised
                break
            except FutureTimeout:
                if gone() or time.monotonic() >= deadline:
                    return None
        outcome = self.images.status(job.key)
        if isinstance(outcome, Published | Failure):
            return outcome
        raise RuntimeError(f"build {job.key} ended without an outcome")

    def _done(self, key: str, future: Future[None]) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
