"""Builds through Cloud Tasks: the registry records the build and enqueues one task for the
builder service, then waits for the record to say the build finished.

Cloud Tasks is not trusted to de-duplicate (its emulator does not, and task names only help
for a while): the build record in Firestore decides who enqueues, and the builder's lease
decides who builds.

A waiting request learns of its build's end from a Firestore listener on the record rather
than by polling it: the end is known within tens of milliseconds, and an instance pays one
read per change of the record, however many of its requests wait (they share one listener
per build, closed when the last one leaves). The record is read directly only when the
listener is broken, or silent although a change is due, once per ``SLOW_POLL``: after a
start, or when a builder holds the build and a third of the lease plus ``SLOW_POLL`` passed
without its heartbeat (a listener whose database hangs hears nothing, and says nothing). A
poll that finds the database unavailable closes the listener and answers every request
waiting on it with that error at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

from google.api_core import exceptions
from google.cloud import tasks_v2

from nixery.errors import BuildRetrying, DatabaseUnavailable, QueueUnavailable
from nixery.gcp.deadline import BACKEND_TIMEOUT, Deadline, bounded
from nixery.job import BuildJob
from nixery.logs import BuildLog
from nixery.ports import BuildRecords, Enqueue, Listening, PublishedImages, never
from nixery.records import Failure, ImageStatus, Pending, Published, remembered

log = logging.getLogger(__name__)

# Seconds between two reads of a record whose listener is broken, or silent when a change
# is due (after a start); and before a broken listener is opened again.
SLOW_POLL = 5.0
RELISTEN = 60.0
# Seconds between two looks at whether a waiting client hung up.
GONE_EVERY = 1.0


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


class _Watch:
    """What this instance knows of one build's record, from its listener or a poll, shared by
    the requests that wait for it. Each status learnt gets the next ``version``."""

    def __init__(self, now: float, lease: float, failure_ttl: float) -> None:
        self.changed = threading.Condition()
        self.lease = lease
        self.failure_ttl = failure_ttl
        self.status: ImageStatus = None
        self.heard = now  # when the status was learnt, by the queue's clock
        self.version = 0
        # The version a start made stale: a change is due after it, and no start until then.
        self.restarted = 0
        # Failures up to this version answer nothing: the first one heard is the failure
        # being retried, unless it is recent (NIXERY_FAILURE_TTL): a build that failed
        # since the request looked.
        self.obsolete = 0
        self.starting = False  # a request of this instance is starting the build
        self.asked = now  # since when a change is due: the watch's start, or the last start
        self.polled = -math.inf
        self.listening: Listening | None = None
        self.opening = True  # its first waiter opens its listener
        self.opened = now
        self.waiters = 0
        self.error: DatabaseUnavailable | None = None  # a poll's, for every waiter

    def learn(self, status: ImageStatus, now: float, polled_at: int | None = None) -> None:
        """Takes a status in; a poll's (``polled_at``: the version when it began) only if
        the listener said nothing newer meanwhile."""
        with self.changed:
            if polled_at is not None and polled_at != self.version:
                return
            self.status, self.heard = status, now
            self.version += 1
            if self.version == 1 and isinstance(status, Failure):
                self.obsolete = 0 if remembered(status, now, self.failure_ttl) else 1
            self.changed.notify_all()

    def answer(self) -> Published | Failure | None:
        if isinstance(self.status, Published):
            return self.status
        if isinstance(self.status, Failure) and self.version > self.obsolete:
            return self.status
        return None

    def retrying(self, now: float) -> str:
        """The cause a builder gave the build back for, while the queue holds it for its retry
        (a builder's claim of the retry clears it: that is waited for); once the hold lapsed
        unclaimed, a request starts it afresh."""
        if isinstance(self.status, Pending) and now < self.lease_end():
            return self.status.cause
        return ""

    def lease_end(self) -> float:
        """When the lease lapses, by the queue's clock; -inf for an absent or failed record."""
        if isinstance(self.status, Pending):
            return self.heard + self.status.lease_left
        return -math.inf

    def alive(self) -> bool:
        return self.opening or (self.listening is not None and self.listening.is_active)

    def due(self) -> bool:
        """Whether a change is due that has not come: the first status, or one after a start."""
        return self.version <= self.restarted

    def poll_at(self) -> float:
        """When to read the record directly: every SLOW_POLL while the listener is broken,
        SLOW_POLL after a change fell due that it has not brought, and when a builder's
        heartbeat is overdue."""
        if not self.alive():
            return self.polled + SLOW_POLL
        if self.due():
            return max(self.polled, self.asked) + SLOW_POLL
        if isinstance(self.status, Pending) and self.status.owned:
            return max(self.polled, self.heard) + self.lease / 3 + SLOW_POLL
        return math.inf


class TaskBuildQueue:
    """The BuildQueue of Google Cloud mode."""

    def __init__(
        self,
        images: PublishedImages,
        records: BuildRecords,
        tasks: Enqueue,
        pickup: float,
        clock: Callable[[], float] = time.time,
        wait: Callable[[threading.Condition, float], object] = threading.Condition.wait,
        max_building: int | None = None,
        lease: float = 60.0,
        failure_ttl: float = 300.0,
    ) -> None:
        """``max_building``: new builds are refused while this many are under way
        (NIXERY_MAX_QUEUED_BUILDS: running or waiting for a builder). ``wait`` waits on a
        condition for at most the seconds given (a test's passes fake time). ``lease``:
        NIXERY_LEASE_TTL, whose third is a builder's heartbeat; ``failure_ttl``:
        NIXERY_FAILURE_TTL, how long a failure answers."""
        self.images = images
        self.records = records
        self.tasks = tasks
        self.pickup = pickup
        self.max_building = max_building
        self.lease = lease
        self.failure_ttl = failure_ttl
        self.clock = clock
        self.wait = wait
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()

    def running(self, key: str) -> bool:
        """Whether a request of this instance waits for the build already (joining it is
        free); otherwise a record under way says so itself (``Pending``)."""
        with self._lock:
            return key in self._watches

    def build(
        self, job: BuildJob, wait: float, gone: Callable[[], bool] = never
    ) -> Published | Failure | None:
        """Records and enqueues the build unless it is under way, then waits for its record
        to say it ended; starts it again when its lease lapses (a builder died, or none took
        the task). One request of this instance at a time starts it. A request refused a
        wait (``TooManyWaiters``, no time to wait) starts or joins it without a listener,
        whose first snapshot would come after its deadline. A build that a builder gave back
        for a passing cause (``release``) raises ``BuildRetrying`` while the queue holds it
        for its retry."""
        if wait <= 0:
            if not self.running(job.key):
                self._start(job)
            return None
        deadline = self.clock() + wait
        with self._watching(job.key) as watch:
            while True:
                with watch.changed:
                    if watch.error is not None:
                        raise watch.error
                    if (answer := watch.answer()) is not None:
                        return answer
                    now = self.clock()
                    if cause := watch.retrying(now):
                        # The queue retries it later: nothing to wait for now.
                        raise BuildRetrying(f"the build will be retried: {cause}")
                    version, poll_at, lease_end = watch.version, watch.poll_at(), watch.lease_end()
                    start = not watch.starting and not watch.due() and lease_end <= now
                    if start:
                        watch.starting = True
                    elif poll_at <= now:
                        watch.polled = now
                        relisten = not watch.alive() and now >= watch.opened + RELISTEN
                        if relisten:
                            watch.opening = True
                    else:
                        if now >= deadline or gone():
                            return None
                        # A listener breaks silently: look at it every SLOW_POLL.
                        wake = min(deadline, poll_at, now + SLOW_POLL)
                        if gone is not never:  # a server that can say so
                            wake = min(wake, now + GONE_EVERY)
                        if lease_end > now:  # then start it again
                            wake = min(wake, lease_end)
                        self.wait(watch.changed, wake - now)
                        continue
                if start:
                    self._restart(job, watch, version)
                elif relisten:  # its first snapshot is the poll's read
                    self._listen(job.key, watch)
                else:
                    self._poll(job.key, watch, version)

    def _poll(self, key: str, watch: _Watch, version: int) -> None:
        """Reads the record; an unavailable database ends every wait on the watch at once,
        and its listener, which would spin reconnecting."""
        try:
            status = self.images.status(key)
        except DatabaseUnavailable as e:
            with watch.changed:
                watch.error, listening, watch.listening = e, watch.listening, None
                watch.changed.notify_all()
            if listening is not None:
                _close(listening)
            raise
        watch.learn(status, self.clock(), polled_at=version)

    def _restart(self, job: BuildJob, watch: _Watch, version: int) -> None:
        """Starts the build, which makes what was heard up to ``version`` stale. A start that
        fails (a full queue) leaves the next request to try its own."""
        started = False
        try:
            self._start(job)
            started = True
        finally:
            with watch.changed:
                watch.starting = False
                if started:
                    watch.restarted = watch.obsolete = max(watch.obsolete, version)
                    watch.asked = self.clock()
                watch.changed.notify_all()

    @contextlib.contextmanager
    def _watching(self, key: str) -> Iterator[_Watch]:
        """The build's watch, opened by its first waiter and closed by its last."""
        with self._lock:
            watch = self._watches.get(key)
            first = watch is None
            if watch is None:
                watch = self._watches[key] = _Watch(self.clock(), self.lease, self.failure_ttl)
            watch.waiters += 1
        try:
            if first:
                self._listen(key, watch)
            yield watch
        finally:
            with self._lock:
                watch.waiters -= 1
                last = watch.waiters == 0
                if last:
                    del self._watches[key]
            if last and watch.listening is not None:
                _close(watch.listening)

    def _listen(self, key: str, watch: _Watch) -> None:
        """Opens a listener in place of the watch's last one (closed, if it broke)."""
        with watch.changed:
            old, watch.listening = watch.listening, None
        if old is not None:
            _close(old)
        listening = None
        try:
            listening = self.records.listen(key, lambda status: watch.learn(status, self.clock()))
        finally:
            with watch.changed:
                watch.listening, watch.opening, watch.opened = listening, False, self.clock()

    def _start(self, job: BuildJob) -> None:
        if attempt := self.records.start(job, self.pickup, self.max_building):
            BuildLog(log, job.key).info("enqueued, attempt %d", attempt, extra={"attempt": attempt})
            self.tasks.enqueue(job, attempt)


def _close(listening: Listening) -> None:
    """Closes a listener on a thread of its own: closing joins its stream's thread for up to
    a second, which the request answered last would otherwise wait for."""
    threading.Thread(target=listening.unsubscribe, name="close-listener", daemon=True).start()
