"""Builds through Cloud Tasks: the registry records the build and enqueues one task for the
builder service, then waits for the record to say the build finished.

Cloud Tasks is not trusted to de-duplicate (its emulator does not, and task names only help
for a while): the build record in Firestore decides who enqueues, and the builder's lease
decides who builds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable

from google.api_core import exceptions
from google.cloud import tasks_v2

from nixery.errors import BuildRetrying, QueueUnavailable
from nixery.gcp.deadline import BACKEND_TIMEOUT, Deadline, bounded
from nixery.job import BuildJob
from nixery.logs import BuildLog
from nixery.ports import BuildRecords, Enqueue, PublishedImages, never
from nixery.records import Failure, Pending, Published

log = logging.getLogger(__name__)


class CloudTasksEnqueuer:
    def __init__(
        self,
        client: tasks_v2.CloudTasksClient,
        queue: str,
        builder_url: str,
        service_account: str | None,
        build_deadline: float,
        timeout: float = BACKEND_TIMEOUT,
    ) -> None:
        """``build_deadline``: NIXERY_BUILD_DEADLINE, which the builder keeps to. Cloud Tasks
        waits that long for its answer before it retries; a build still running then keeps
        its lease, so the retry finds it busy rather than running it twice. An enqueue gives
        up after ``timeout`` seconds with ``QueueUnavailable``."""
        self.client = client
        self.queue = queue
        self.builder_url = builder_url
        self.service_account = service_account
        self.build_deadline = build_deadline
        self.deadline = Deadline("Cloud Tasks", QueueUnavailable, timeout)

    @bounded
    def enqueue(self, job: BuildJob, attempt: int) -> None:
        """Enqueues one attempt of a build. The task's name carries the key and the attempt,
        so Cloud Tasks refuses a second enqueue of the same attempt (a retried call)."""
        request: dict[str, object] = {
            "http_method": tasks_v2.HttpMethod.POST,
            "url": self.builder_url,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(job.to_dict()).encode(),
        }
        if self.service_account:
            # Cloud Run checks this token: only the queue may call the builder.
            request["oidc_token"] = {
                "service_account_email": self.service_account,
                "audience": self.builder_url,
            }
        now = time.time()
        task = {
            "name": f"{self.queue}/tasks/{job.key}-{attempt}",
            "http_request": request,
            "dispatch_deadline": {"seconds": int(self.build_deadline)},
            # Due now, as without it; said here, so that every delivery carries it in its
            # X-CloudTasks-TaskETA header (the emulator's only then), for the build's report.
            "schedule_time": {"seconds": int(now), "nanos": int(now % 1 * 1e9)},
        }
        with contextlib.suppress(exceptions.AlreadyExists):  # enqueued already
            self.client.create_task(parent=self.queue, task=task)  # type: ignore[arg-type]


class TaskBuildQueue:
    """The BuildQueue of Google Cloud mode."""

    def __init__(
        self,
        images: PublishedImages,
        records: BuildRecords,
        tasks: Enqueue,
        pickup: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_building: int | None = None,
    ) -> None:
        """``max_building``: new builds are refused while this many are under way
        (NIXERY_MAX_QUEUED_BUILDS: running or waiting for a builder)."""
        self.images = images
        self.records = records
        self.tasks = tasks
        self.pickup = pickup
        self.max_building = max_building
        self.clock = clock
        self.sleep = sleep

    def running(self, key: str) -> bool:
        """Nothing known here: a record under way says so itself (``Pending``)."""
        return False

    def build(
        self, job: BuildJob, wait: float, gone: Callable[[], bool] = never
    ) -> Published | Failure | None:
        """Records and enqueues the build, then polls its record: one read per poll. A build
        that a builder gave back for a passing cause (``release``) raises ``BuildRetrying``."""
        deadline = self.clock() + wait
        self._start(job)
        delay = 0.2
        while True:
            status = self.images.status(job.key)
            if isinstance(status, Published | Failure):
                return status
            if isinstance(status, Pending) and status.cause:
                # The queue retries it later: nothing to wait for now.
                raise BuildRetrying(f"the build will be retried: {status.cause}")
            if not isinstance(status, Pending) or status.lease_left <= 0:
                self._start(job)  # the builder died, or the task was lost: build again
            if self.clock() + delay > deadline or gone():
                return None
            self.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def _start(self, job: BuildJob) -> None:
        if attempt := self.records.start(job, self.pickup, self.max_building):
            BuildLog(log, job.key).info("enqueued, attempt %d", attempt, extra={"attempt": attempt})
            self.tasks.enqueue(job, attempt)
