"""Requests that wait for a build in Google Cloud mode, on the Firestore emulator: they hear
the build's end from a listener on its record, share one listener per build, close it when
the last has its answer, and poll slowly when it breaks. Nothing runs the build: the test
publishes, as the builder would.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from nixery.errors import BuildRetrying
from nixery.gcp.firestore_state import FirestoreBuildRecords, FirestoreDatabase
from nixery.gcp.task_queue import SLOW_POLL, TaskBuildQueue
from nixery.job import BuildJob
from nixery.ports import Listening
from nixery.records import ImageStatus, Published
from tests.helpers.fakes import sample_job, sample_manifests

pytestmark = pytest.mark.e2e

MANIFESTS = sample_manifests()
PUBLISHED = Published({m.media_type: m.digest for m in MANIFESTS})
LISTENER_THREAD = "Thread-ConsumeBidirectionalStream"  # the client library's, one a listener


class Records(FirestoreBuildRecords):
    """Keeps the listeners it opens, so that a test can look at them or break one."""

    def __init__(self, database: FirestoreDatabase) -> None:
        super().__init__(database)
        self.opened: list[Listening] = []

    def listen(self, key: str, changed: Callable[[ImageStatus], None]) -> Listening:
        listening = super().listen(key, changed)
        self.opened.append(listening)
        return listening


class Polls:
    """The published images, counting the direct reads of a record (the polls)."""

    def __init__(self, database: FirestoreDatabase) -> None:
        self.images = database.ports().images
        self.reads = 0

    def status(self, key: str) -> ImageStatus:
        self.reads += 1
        return self.images.status(key)

    def __getattr__(self, name: str) -> object:
        return getattr(self.images, name)


class Tasks:
    def __init__(self) -> None:
        self.enqueued: list[BuildJob] = []

    def enqueue(self, job: BuildJob, attempt: int) -> None:
        self.enqueued.append(job)


@pytest.fixture
def database(firestore_client) -> FirestoreDatabase:
    return FirestoreDatabase(firestore_client, f"t{uuid.uuid4().hex}_")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(32) as pool:
        yield pool


def until(condition: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def listener_threads() -> int:
    return sum(t.name == LISTENER_THREAD for t in threading.enumerate())


def wait_for(queue: TaskBuildQueue, job: BuildJob, pool: ThreadPoolExecutor) -> Future:
    return pool.submit(queue.build, job, 60)


def test_waiting_requests_hear_the_end_on_one_listener_per_build_closed_after(
    database: FirestoreDatabase, pool: ThreadPoolExecutor
) -> None:
    records, images, tasks = Records(database), Polls(database), Tasks()
    queue = TaskBuildQueue(images, records, tasks, pickup=60)
    jobs = [sample_job("hello"), sample_job("zlib")]
    threads = listener_threads()
    waiting = [wait_for(queue, job, pool) for job in jobs for _ in range(10)]
    until(lambda: len(tasks.enqueued) == 2)
    assert listener_threads() == threads + 2
    for job in jobs:
        database.ports().images.publish(job.key, MANIFESTS)
    assert [w.result(timeout=30) for w in waiting] == [PUBLISHED] * 20
    assert sorted(tasks.enqueued, key=lambda j: j.key) == sorted(jobs, key=lambda j: j.key)
    assert images.reads == 0, "no poll"
    assert len(records.opened) == 2
    until(lambda: listener_threads() == threads, timeout=5)
    assert not any(listening.is_active for listening in records.opened)


def test_a_waiting_request_whose_listener_broke_gets_its_answer_by_polling(
    database: FirestoreDatabase, pool: ThreadPoolExecutor
) -> None:
    """Closing the listener leaves it as a stream's terminal error does (no longer active):
    the record is read within SLOW_POLL seconds instead."""
    records, images, tasks = Records(database), Polls(database), Tasks()
    queue = TaskBuildQueue(images, records, tasks, pickup=60)
    job = sample_job()
    waiting = wait_for(queue, job, pool)
    until(lambda: tasks.enqueued and records.opened)
    records.opened[0].unsubscribe()
    database.ports().images.publish(job.key, MANIFESTS)
    assert waiting.result(timeout=2 * SLOW_POLL + 10) == PUBLISHED
    assert images.reads in (1, 2), "a poll, or two if one came between the break and the end"
    assert len(records.opened) == 1, "opened again only after RELISTEN"


def test_a_waiting_request_hears_its_build_given_back_and_answers_with_the_cause(
    database: FirestoreDatabase, pool: ThreadPoolExecutor
) -> None:
    """A builder that gives the build back for a passing cause (storage down) has the queue
    retry it: the waiting request hears the release from the listener, no poll, and answers
    BuildRetrying (a 503 naming the cause) rather than wait for the retry."""
    records, images, tasks = Records(database), Polls(database), Tasks()
    queue = TaskBuildQueue(images, records, tasks, pickup=60)
    job = sample_job()
    waiting = wait_for(queue, job, pool)
    until(lambda: tasks.enqueued)
    assert records.claim(job, "builder-a", 60) == "taken"
    records.release(job.key, "builder-a", "Cloud Storage did not answer within 2s", 30)
    with pytest.raises(BuildRetrying, match="retried: Cloud Storage did not answer"):
        waiting.result(timeout=30)
    assert images.reads == 0, "heard, not polled"
    assert len(tasks.enqueued) == 1, "the queue retries it, no request enqueues it again"
