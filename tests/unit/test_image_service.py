"""The image service and both build queues, on the in-memory fakes with a fake clock: no
Nix, no HTTP, no emulators, so every branch of the request path is cheap to reach."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future

import pytest

from nixery.blobs import store_bytes
from nixery.config import WaitLimits
from nixery.errors import (
    BuildError,
    BuildFailed,
    BuildInterrupted,
    BuildQueueFull,
    BuildRetrying,
    DatabaseUnavailable,
    ImageLost,
    SourceUnavailable,
    StillBuilding,
    TooManyWaiters,
    Transient,
    UnknownBlob,
    UnknownManifest,
    UnknownTag,
)
from nixery.gcp.task_queue import RELISTEN, SLOW_POLL, TaskBuildQueue
from nixery.job import BuildJob
from nixery.local.thread_queue import ThreadBuildQueue
from nixery.oci.manifests import DOCKER_MANIFEST, OCI_MANIFEST, sha256_digest
from nixery.ports import BuildQueue
from nixery.records import Failure, Published, Revision
from nixery.request import Digest, Tag
from nixery.service import images as images_module
from nixery.service.images import BlobLocation, Caller, ImageService
from nixery.service.waiters import Waiters
from tests.helpers.fakes import (
    BUILD_ERRORS,
    REVISION,
    FakeBuilder,
    FakeClock,
    MemoryBlobStore,
    MemoryState,
    ScriptedQueue,
    StaticSource,
    sample_config,
    sample_job,
    sample_manifests,
)

JOB = sample_job()
LATEST = Tag("latest")
WAIT = 25.0
FAILURE_TTL = 300.0
MANIFESTS = sample_manifests()
PUBLISHED = Published({m.media_type: m.digest for m in MANIFESTS})
OCI = MANIFESTS[0]
assert OCI.media_type == OCI_MANIFEST


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> MemoryState:
    return MemoryState(clock)


@pytest.fixture
def source() -> StaticSource:
    return StaticSource({"latest": REVISION})


@pytest.fixture
def blobs() -> MemoryBlobStore:
    """Holding the sample image's config, so that a published sample image is whole."""
    store = MemoryBlobStore()
    store_bytes(store, sha256_digest(sample_config()), sample_config())
    return store


@pytest.fixture
def service(state, source, blobs, clock) -> Callable[[BuildQueue], ImageService]:
    def make(queue: BuildQueue) -> ImageService:
        return ImageService(source=source, images=state, blobs=blobs, builds=queue,
                            wait=WAIT, failure_ttl=FAILURE_TTL, clock=clock)  # fmt: skip

    return make


@pytest.fixture
def thread_queue(state: MemoryState) -> Iterator[Callable[[FakeBuilder], ThreadBuildQueue]]:
    queues: list[ThreadBuildQueue] = []

    def make(builder: FakeBuilder) -> ThreadBuildQueue:
        queues.append(ThreadBuildQueue(builder, state, workers=4))
        return queues[-1]

    yield make
    for queue in queues:
        queue.shutdown()


# --- ImageService ----------------------------------------------------------------------


def test_the_tag_names_the_job_the_fakes_publish() -> None:
    assert BuildJob.of(JOB.request, REVISION) == JOB


def test_a_published_image_is_served_without_touching_the_queue(service, state) -> None:
    state.publish(JOB.key, MANIFESTS)
    queue = ScriptedQueue()
    images = service(queue)
    assert images.manifest(JOB.request, LATEST, [OCI_MANIFEST]) == OCI
    docker = images.manifest(JOB.request, LATEST, [])
    assert docker.media_type == DOCKER_MANIFEST
    assert queue.calls == []


CONFIG = sha256_digest(sample_config())


class RestoringBuilder(FakeBuilder):
    """A build that stores the image's config blob before it publishes, as a real one does."""

    def __init__(self, state: MemoryState, blobs: MemoryBlobStore) -> None:
        super().__init__(state, MANIFESTS)
        self.blobs = blobs

    def run(self, job: BuildJob, enqueued: float | None = None) -> None:
        store_bytes(self.blobs, CONFIG, sample_config())
        super().run(job)


@pytest.mark.parametrize("loss", ["blob deleted", "blob damaged", "manifest deleted"])
def test_a_published_image_that_lost_a_part_is_built_again(
    service, state, blobs, thread_queue, loss: str
) -> None:
    """Never a manifest whose blobs cannot be pulled, nor a 500 for a manifest that an
    in-memory answer says exists: the image is forgotten and built again."""
    state.publish(JOB.key, MANIFESTS)
    if loss == "blob deleted":
        del blobs.blobs[CONFIG]
    elif loss == "blob damaged":
        blobs.blobs[CONFIG] = b"damaged"
    else:
        state._manifests.clear()
    builder = RestoringBuilder(state, blobs)
    images = service(thread_queue(builder))
    assert within(30, lambda: images.manifest(JOB.request, LATEST, [OCI_MANIFEST])) == OCI
    assert builder.calls == [JOB]
    assert blobs.blobs[CONFIG] == sample_config()


def test_an_image_still_lost_after_its_rebuild_is_transient(service, state, blobs) -> None:
    state.publish(JOB.key, MANIFESTS)
    del blobs.blobs[CONFIG]
    queue = ScriptedQueue(PUBLISHED)  # "built", yet the blob is still missing
    with pytest.raises(ImageLost):
        service(queue).manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert state.status(JOB.key) is None, "forgotten, so that the next request builds it"


def test_a_damaged_blob_is_never_served(service, blobs) -> None:
    blobs.blobs[CONFIG] = b"damaged"
    with pytest.raises(UnknownBlob):
        service(ScriptedQueue()).blob(Digest(CONFIG))
    assert CONFIG not in blobs.blobs


@pytest.mark.parametrize("error", BUILD_ERRORS, ids=lambda e: type(e).__name__)
def test_a_remembered_failure_raises_its_error_without_building(
    service, state, clock, error: BuildError
) -> None:
    state.record_failure(JOB.key, Failure.of(error, clock() - FAILURE_TTL + 1))
    queue = ScriptedQueue()
    with pytest.raises(BuildError) as raised:
        service(queue).manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert type(raised.value) is type(error)
    assert (raised.value.message, raised.value.detail) == (error.message, error.detail)
    assert queue.calls == []


@pytest.mark.parametrize("error", BUILD_ERRORS, ids=lambda e: type(e).__name__)
def test_a_failure_past_its_ttl_is_built_again(
    service, state, clock, thread_queue, error: BuildError
) -> None:
    state.record_failure(JOB.key, Failure.of(error, clock() - FAILURE_TTL))
    builder = FakeBuilder(state, MANIFESTS)
    images = service(thread_queue(builder))
    assert within(30, lambda: images.manifest(JOB.request, LATEST, [OCI_MANIFEST])) == OCI
    assert builder.calls == [JOB]
    assert state.status(JOB.key) == PUBLISHED


def test_the_queue_is_given_the_job_and_the_wait(service) -> None:
    queue = ScriptedQueue(PUBLISHED)
    assert service(queue).image(JOB) == PUBLISHED
    assert queue.calls == [(JOB, WAIT)]


def test_a_build_that_fails_now_raises_its_error(service, clock) -> None:
    failure = Failure.of(BuildFailed("no such attribute", "log"), clock())
    with pytest.raises(BuildFailed, match="no such attribute"):
        service(ScriptedQueue(failure)).image(JOB)


def test_a_queue_out_of_patience_is_still_building(service, state) -> None:
    with pytest.raises(StillBuilding):
        service(ScriptedQueue(None)).image(JOB)
    assert state.status(JOB.key) is None


@pytest.mark.parametrize("error", [BuildInterrupted("disk full"),
                                   SourceUnavailable("git fetch failed")])  # fmt: skip
def test_a_transient_error_propagates_and_nothing_is_remembered(
    service, state, error: Transient
) -> None:
    with pytest.raises(Transient) as raised:
        service(ScriptedQueue(error)).manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert raised.value is error
    assert state.status(JOB.key) is None


def test_a_crash_of_the_queue_is_transient_and_nothing_is_remembered(service, state) -> None:
    crash = KeyError("bug")
    with pytest.raises(Transient) as raised:
        service(ScriptedQueue(crash)).image(JOB)
    assert not isinstance(raised.value, BuildError)
    assert raised.value.__cause__ is crash
    assert state.status(JOB.key) is None


def test_a_digest_reference_reads_the_state_only(service, state, source) -> None:
    state.publish(JOB.key, MANIFESTS)
    queue = ScriptedQueue()
    images = service(queue)
    docker = MANIFESTS[1]
    assert images.manifest(JOB.request, Digest(docker.digest), [OCI_MANIFEST]) == docker
    with pytest.raises(UnknownManifest):
        images.manifest(JOB.request, Digest(sha256_digest(b"none")), [OCI_MANIFEST])
    assert source.resolved == []
    assert queue.calls == []
    assert state.reads == 0


def test_an_unknown_tag_builds_nothing(service, state) -> None:
    queue = ScriptedQueue()
    with pytest.raises(UnknownTag):
        service(queue).manifest(JOB.request, Tag("v9"), [OCI_MANIFEST])
    assert queue.calls == []
    assert state.reads == 0


def test_blobs_are_found_with_their_size_or_unknown(service, blobs) -> None:
    images = service(ScriptedQueue())
    store_bytes(blobs, sha256_digest(b"config"), b"config")
    assert images.blob(Digest(sha256_digest(b"config"))) == BlobLocation(6, None)
    with pytest.raises(UnknownBlob):
        images.blob(Digest(sha256_digest(b"other")))


# A published image never changes: after its first pull, a pull by tag is answered from
# memory (the tag's revision, then a dict), until something says the image may have changed.


class CountingState(MemoryState):
    """Counts every read of a manifest or of referrers, besides the status reads."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.part_reads = 0

    def manifest(self, digest: str):
        self.part_reads += 1
        return super().manifest(digest)

    def referrers(self, subject: str):
        self.part_reads += 1
        return super().referrers(subject)


class CountingBlobs(MemoryBlobStore):
    def __init__(self, source: MemoryBlobStore) -> None:
        super().__init__()
        self.blobs = source.blobs
        self.checks = 0

    def intact(self, digest: str) -> bool:
        self.checks += 1
        return super().intact(digest)


def test_a_warm_pull_by_tag_reads_no_state_and_checks_no_blob(source, blobs, clock) -> None:
    state = CountingState(clock)
    counted = CountingBlobs(blobs)
    state.publish(JOB.key, MANIFESTS)
    images = ImageService(source=source, images=state, blobs=counted, builds=ScriptedQueue(),
                          wait=WAIT, failure_ttl=FAILURE_TTL, clock=clock)  # fmt: skip
    assert images.manifest(JOB.request, LATEST, [OCI_MANIFEST]) == OCI
    assert images.manifest(JOB.request, Digest(OCI.digest), []) == OCI
    reads, part_reads, checks = state.reads, state.part_reads, counted.checks
    for _ in range(3):
        assert images.manifest(JOB.request, LATEST, [OCI_MANIFEST]) == OCI
        assert images.manifest(JOB.request, Digest(OCI.digest), []) == OCI
    assert (state.reads, state.part_reads, counted.checks) == (reads, part_reads, checks)
    assert images.manifest(JOB.request, LATEST, []).media_type == DOCKER_MANIFEST, "its own"


@pytest.mark.parametrize("how", ["gc deleted it", "its blob's GET found it gone"])
def test_an_image_answered_from_memory_is_checked_again_once_it_may_have_changed(
    service, state, blobs, thread_queue, how: str
) -> None:
    """`nixery gc` (another process) moves the state's generation, while a blob deleted or
    damaged by hand is found out by its own GET: either way the next pull checks the image
    and builds it again."""
    state.publish(JOB.key, MANIFESTS)
    builder = RestoringBuilder(state, blobs)
    images = service(thread_queue(builder))
    assert images.manifest(JOB.request, LATEST, [OCI_MANIFEST]) == OCI
    if how == "gc deleted it":
        del blobs.blobs[CONFIG]
        state.forget(JOB.key)  # as gc deletes an image record, then its blobs
    else:
        blobs.blobs[CONFIG] = b"damaged"
        with pytest.raises(UnknownBlob):
            images.blob(Digest(CONFIG))
    assert within(30, lambda: images.manifest(JOB.request, LATEST, [OCI_MANIFEST])) == OCI
    assert builder.calls == [JOB]


def test_an_unknown_blob_leaves_the_answers_in_memory(service, state) -> None:
    """Else any client could have every pull read the state again, with a made-up digest."""
    state.publish(JOB.key, MANIFESTS)
    images = service(ScriptedQueue())
    images.manifest(JOB.request, LATEST, [OCI_MANIFEST])
    reads = state.reads
    with pytest.raises(UnknownBlob):
        images.blob(Digest(sha256_digest(b"other")))
    images.manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert state.reads == reads


class RacingBlobs(MemoryBlobStore):
    """Runs ``meanwhile`` once, right after a blob check: what another thread does between
    a pull's check of its image and the pull keeping its answer."""

    def __init__(self, source: MemoryBlobStore) -> None:
        super().__init__()
        self.blobs = source.blobs
        self.meanwhile: Callable[[], None] | None = None

    def intact(self, digest: str) -> bool:
        found = super().intact(digest)
        if (meanwhile := self.meanwhile) is not None:
            self.meanwhile = None
            meanwhile()
        return found


def test_a_blob_found_gone_while_a_pull_checked_its_image_keeps_that_answer_out_of_memory(
    state, source, blobs, clock
) -> None:
    """The blob GET forgets the answers in memory before the pull, which found the blob
    intact a moment before, keeps its own: that one must not be kept either (the state's
    generation did not move: nothing was deleted through it)."""
    state.publish(JOB.key, MANIFESTS)
    racing = RacingBlobs(blobs)
    images = ImageService(source=source, images=state, blobs=racing, builds=ScriptedQueue(),
                          wait=WAIT, failure_ttl=FAILURE_TTL, clock=clock)  # fmt: skip

    def damaged_and_found_so() -> None:
        racing.blobs[CONFIG] = b"damaged"
        with pytest.raises(UnknownBlob):
            images.blob(Digest(CONFIG))

    images.manifest(JOB.request, LATEST, [])  # an answer in memory names the blob
    racing.meanwhile = damaged_and_found_so
    assert images.manifest(JOB.request, LATEST, [OCI_MANIFEST]) == OCI
    assert images.warm(JOB.request, LATEST, [OCI_MANIFEST]) is None
    assert images.warm(JOB.request, LATEST, []) is None


def test_the_blobs_of_answers_that_go_are_no_longer_counted(
    service, state, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else the blobs named grow without bound while the answers stay bounded."""
    monkeypatch.setattr(images_module, "WARM_SIZE", 1)
    state.publish(JOB.key, MANIFESTS)
    images = service(ScriptedQueue())
    for accept in ([OCI_MANIFEST], [], [OCI_MANIFEST]):
        images.manifest(JOB.request, LATEST, accept)
    assert images._warm_blobs == {CONFIG: 1}


def test_the_notes_of_use_stay_bounded_when_none_is_due(
    service, state, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images_module, "TOUCHED_SIZE", 10)
    images = service(ScriptedQueue())
    for i in range(25):
        images._touch(f"image-{i}")
    assert len(images._touched) <= 10
    assert "image-24" in images._touched and "image-0" not in images._touched
    assert len(state.used) == 25


def test_a_tag_that_moves_to_a_new_revision_is_the_new_image_at_once(
    service, state, source
) -> None:
    state.publish(JOB.key, MANIFESTS)
    queue = ScriptedQueue(PUBLISHED)
    images = service(queue)
    images.manifest(JOB.request, LATEST, [OCI_MANIFEST])
    source.revisions["latest"] = Revision("test", "1" * 40)
    images.manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert [job.revision for job, _ in queue.calls] == [source.revisions["latest"]]


# --- ThreadBuildQueue ------------------------------------------------------------------


def within(seconds: float, call: Callable[[], object]) -> object:
    """What ``call`` returns or raises, failing the test if it blocks longer than ``seconds``
    (a deadlocked queue fails its test rather than hanging the run)."""
    done: list[object] = []

    def run() -> None:
        try:
            done.append(call())
        except Exception as e:
            done.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"still blocked after {seconds} s: deadlocked"
    return done[0]


class InlineExecutor(Executor):
    """Runs each build as it is submitted: the build is over before ``submit`` returns."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future


def test_a_build_that_ends_before_its_callback_is_added_does_not_deadlock(
    state, thread_queue
) -> None:
    """A build may end before ``build`` registers its done callback (a duplicate that finds
    the image published, a source that fails at once): the callback then runs at once, in
    the caller, which must not hold a lock the callback takes."""
    builder = FakeBuilder(state, MANIFESTS, seconds=0)
    queue = thread_queue(builder)
    queue.pool.shutdown()
    queue.pool = InlineExecutor()  # type: ignore[assignment]
    assert within(5, lambda: queue.build(JOB, 30)) == PUBLISHED
    assert within(5, lambda: queue.build(sample_job("other"), 30)) is not None


def build_concurrently(queue: BuildQueue, builder: FakeBuilder, count: int) -> list[object]:
    """``count`` calls of ``build`` that all wait on the held build before it is released;
    each call's outcome, or what it raised."""
    builder.release.clear()
    entered: list[None] = []
    results: list[object] = [None] * count

    def build(i: int) -> None:
        entered.append(None)
        try:
            results[i] = queue.build(JOB, 30)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=build, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    assert builder.started.wait(10)
    while len(entered) < count:
        time.sleep(0.01)
    time.sleep(0.2)  # from entering build() to waiting on the shared build
    builder.release.set()
    for t in threads:
        t.join(timeout=30)
    return results


def test_concurrent_builds_of_one_key_run_the_builder_once(state, thread_queue) -> None:
    builder = FakeBuilder(state, MANIFESTS)
    results = build_concurrently(thread_queue(builder), builder, 8)
    assert results == [PUBLISHED] * 8
    assert builder.calls == [JOB]


def test_a_transient_builder_error_reaches_every_waiter_and_is_not_kept(
    state, thread_queue
) -> None:
    error = BuildInterrupted("nix was killed")
    builder = FakeBuilder(state, error)
    queue = thread_queue(builder)
    assert build_concurrently(queue, builder, 4) == [error] * 4
    assert builder.calls == [JOB]
    assert state.status(JOB.key) is None
    builder.outcome = MANIFESTS
    time.sleep(0.1)  # the failed build is forgotten by a callback, just after its waiters wake
    assert within(30, lambda: queue.build(JOB, 30)) == PUBLISHED  # the next one builds again
    assert builder.calls == [JOB, JOB]


def test_a_recorded_failure_is_the_outcome(state, thread_queue, clock) -> None:
    failure = Failure.of(BuildFailed("broken"), clock())
    queue = thread_queue(FakeBuilder(state, failure))
    assert within(30, lambda: queue.build(JOB, 30)) == failure


def test_a_wait_that_runs_out_leaves_the_build_running(state, thread_queue) -> None:
    builder = FakeBuilder(state, MANIFESTS)
    builder.release.clear()
    queue = thread_queue(builder)
    assert within(5, lambda: queue.build(JOB, 0.05)) is None
    assert within(5, lambda: queue.build(JOB, 0.05)) is None
    assert builder.calls == [JOB]
    builder.release.set()
    deadline = time.monotonic() + 10
    while state.status(JOB.key) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.status(JOB.key) == PUBLISHED


# --- TaskBuildQueue --------------------------------------------------------------------

PICKUP = 10.0


class RecordingTasks:
    """The Cloud Tasks queue: records when each job was enqueued."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.enqueued: list[tuple[float, BuildJob]] = []
        self.attempts: list[int] = []

    def enqueue(self, job: BuildJob, attempt: int) -> None:
        self.enqueued.append((self.clock(), job))
        self.attempts.append(attempt)


@pytest.fixture
def tasks(clock: FakeClock) -> RecordingTasks:
    return RecordingTasks(clock)


def fake_wait(clock: FakeClock) -> Callable[[threading.Condition, float], None]:
    """Waits by passing fake time, up to what the world does next (``clock.after``), which
    the fake state's listeners hear at once: as a change wakes a real wait."""
    return lambda _, seconds: clock.nap(seconds)


def task_queue_of(state, tasks, clock, pickup: float = PICKUP) -> TaskBuildQueue:
    return TaskBuildQueue(state, state, tasks, pickup, clock=clock, wait=fake_wait(clock))


@pytest.fixture
def task_queue(state, tasks, clock) -> TaskBuildQueue:
    return task_queue_of(state, tasks, clock)


def test_tasks_enqueue_once_and_answer_when_the_build_is_published_without_a_read(
    task_queue, state, tasks, clock
) -> None:
    """The listener says when: no poll, no lag."""
    start = clock()
    clock.after(5, lambda: state.publish(JOB.key, MANIFESTS))
    assert task_queue.build(JOB, 60) == PUBLISHED
    assert [job for _, job in tasks.enqueued] == [JOB]
    assert clock() == start + 5
    assert state.reads == 0
    assert [listener.heard for listener in state.listeners[JOB.key]] == [3]  # none, start, end


def test_tasks_answer_a_recorded_failure(task_queue, state, tasks, clock) -> None:
    failure = Failure.of(BuildFailed("broken"), clock() + 1)
    clock.after(1, lambda: state.record_failure(JOB.key, failure))
    assert task_queue.build(JOB, 60) == failure
    assert len(tasks.enqueued) == 1


def test_tasks_start_again_the_failure_they_find_and_answer_the_next(
    task_queue, state, tasks, clock
) -> None:
    """The service asks for a build when a failure is no longer remembered: that failure is
    what is retried, not an answer."""
    state.record_failure(JOB.key, Failure.of(BuildFailed("old"), clock() - 3600))
    failure = Failure.of(BuildFailed("new"), clock() + 1)
    clock.after(1, lambda: state.record_failure(JOB.key, failure))
    assert task_queue.build(JOB, 60) == failure
    assert len(tasks.enqueued) == 1


def test_tasks_answer_a_failure_recorded_since_the_service_looked(
    task_queue, state, tasks, clock
) -> None:
    """A build that failed between the service's read and the listener's first snapshot is
    an answer for NIXERY_FAILURE_TTL, not a failure to retry at once."""
    failure = Failure.of(BuildFailed("just now"), clock())
    state.record_failure(JOB.key, failure)
    assert task_queue.build(JOB, 60) == failure
    assert tasks.enqueued == []


def test_tasks_return_none_at_the_deadline_without_a_read(state, tasks, clock) -> None:
    queue = task_queue_of(state, tasks, clock, pickup=600)
    start = clock()
    assert queue.build(JOB, 15) is None
    assert clock() == start + 15
    assert state.reads == 0
    assert len(tasks.enqueued) == 1


def test_tasks_of_a_build_under_way_are_not_enqueued_again(task_queue, tasks) -> None:
    assert task_queue.build(JOB, 1) is None
    assert task_queue.build(JOB, 1) is None
    assert len(tasks.enqueued) == 1


def test_tasks_restart_a_build_whose_builder_died(task_queue, state, tasks, clock) -> None:
    """A builder claims the job at t+1 for 20 s and dies: the build is enqueued again when
    its lease lapses, not before, and again after each pickup time that passes unclaimed."""
    start = clock()
    clock.after(1, lambda: state.claim(JOB, "builder-a", 20))
    assert task_queue.build(JOB, 60) is None
    times = [at - start for at, _ in tasks.enqueued]
    assert times == [0, 21, 21 + PICKUP, 21 + 2 * PICKUP, 21 + 3 * PICKUP]
    assert state.attempts[JOB.key] == len(times)
    assert tasks.attempts == list(range(1, len(times) + 1)), "each attempt its own task name"
    assert state.reads == 0


def test_tasks_restart_a_build_no_builder_picked_up(task_queue, tasks, clock) -> None:
    start = clock()
    assert task_queue.build(JOB, PICKUP + 5) is None
    assert [at - start for at, _ in tasks.enqueued] == [0, PICKUP]


def test_tasks_waiting_together_share_one_listener_and_one_start(
    task_queue, state, tasks, clock
) -> None:
    """Requests of one instance that wait for one build hear it through one listener, and one
    of them starts it; the listener is closed when the last has its answer."""
    answers: list[object] = []

    def another() -> None:
        assert task_queue.running(JOB.key), "joining a build a request waits for is free"
        clock.after(1, lambda: state.publish(JOB.key, MANIFESTS))
        answers.append(task_queue.build(JOB, 60))

    clock.after(1, another)
    assert task_queue.build(JOB, 60) == PUBLISHED
    assert answers == [PUBLISHED]
    assert len(state.listeners[JOB.key]) == 1
    assert not task_queue.running(JOB.key)
    assert not state.listeners[JOB.key][0].is_active
    assert len(tasks.enqueued) == 1


def test_tasks_whose_listener_broke_poll_slowly_and_listen_again(
    task_queue, state, tasks, clock
) -> None:
    """A broken listener: the record is read every SLOW_POLL seconds instead, and a new
    listener is opened RELISTEN seconds after the broken one."""
    start = clock()
    clock.after(1, lambda: state.listeners[JOB.key][0].fail())
    clock.after(1 + RELISTEN + 3 * SLOW_POLL, lambda: state.publish(JOB.key, MANIFESTS))
    assert task_queue.build(JOB, 600) == PUBLISHED
    assert clock() - start == 1 + RELISTEN + 3 * SLOW_POLL  # the new listener heard it
    assert len(state.listeners[JOB.key]) == 2
    assert state.reads == RELISTEN / SLOW_POLL  # then the new listener's first snapshot


def test_tasks_read_the_record_when_a_change_due_after_a_start_does_not_come(
    task_queue, state, tasks, clock
) -> None:
    """A listener that stays active but hears nothing (a stalled stream): the start's change
    does not come, so the record is read SLOW_POLL later, and the build's end with it."""
    start = clock()
    state.claim(JOB, "builder-a", 20)  # under way: the first status is a live lease
    clock.after(0.5, lambda: state.listeners[JOB.key][0].stall())
    clock.after(1, lambda: state.publish(JOB.key, MANIFESTS))
    assert task_queue.build(JOB, 60) == PUBLISHED
    assert clock() - start == 20 + SLOW_POLL  # the lease ran out, the start found it done
    assert state.reads == 1
    assert tasks.enqueued == []


def test_tasks_of_a_request_refused_a_wait_start_the_build_without_a_listener(
    task_queue, state, source, blobs, tasks, clock
) -> None:
    """Beyond NIXERY_MAX_WAITERS the request is answered at once and its build goes on: it is
    started (or joined) with no listener opened, and no wait."""
    service = ImageService(
        source=source, images=state, blobs=blobs, builds=task_queue, wait=WAIT,
        failure_ttl=FAILURE_TTL, clock=clock, waiters=Waiters(WaitLimits(1, 1, 1)),
    )  # fmt: skip
    assert service.waiters is not None
    with service.waiters.waiting("another", "somebody"):
        with pytest.raises(TooManyWaiters):
            service.manifest(JOB.request, LATEST, [], Caller("1.2.3.4"))
        with pytest.raises(TooManyWaiters):
            service.manifest(JOB.request, LATEST, [], Caller("1.2.3.4"))
    assert [job for _, job in tasks.enqueued] == [JOB], "started once, then joined"
    assert JOB.key not in state.listeners
    assert clock.slept == []


def test_tasks_answer_a_build_given_back_for_a_passing_cause_at_once(
    task_queue, state, tasks, clock
) -> None:
    """A builder that gave the build back (storage down, say) has the queue retry the task:
    the waiting request hears it from the listener and answers at once with the cause, and
    neither it nor the next request enqueues the build again while the hold lasts; a retry
    that a builder claimed is waited for (storage may be back); after the hold passes
    unclaimed, a request enqueues it again and waits for it."""
    clock.after(1, lambda: state.claim(JOB, "builder-a", 20))
    cause = "Cloud Storage did not answer within 2s"
    clock.after(3, lambda: state.release(JOB.key, "builder-a", cause, 30))
    start = clock()
    with pytest.raises(BuildRetrying, match=f"the build will be retried: {cause}"):
        task_queue.build(JOB, 60)
    assert clock() - start == 3, "at once"
    with pytest.raises(BuildRetrying):
        task_queue.build(JOB, 60)
    assert len(tasks.enqueued) == 1
    state.claim(JOB, "builder-b", 20)
    assert task_queue.build(JOB, 1) is None, "the retry under way, waited for"
    state.release(JOB.key, "builder-b", cause, 30)
    with pytest.raises(BuildRetrying):
        task_queue.build(JOB, 60)
    clock.advance(31)
    assert task_queue.build(JOB, 1) is None, "a fresh attempt, waited for"
    assert tasks.attempts == [1, 2]


def test_a_pull_by_tag_is_written_down_at_most_once_an_hour(service, state, clock) -> None:
    """What `nixery gc` keeps; a write per pull would cost a database write per pull."""
    state.publish(JOB.key, MANIFESTS)
    images = service(ScriptedQueue())
    images.manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert state.used == {JOB.key: clock()}
    first = clock()
    clock.advance(60)
    images.manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert state.used == {JOB.key: first}


def test_a_use_record_that_fails_to_write_never_fails_the_pull_and_is_written_by_the_next(
    service, state, clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried again a minute later, not an hour: otherwise `nixery gc` would see the image
    unused, and might collect an image in use. The pulls meanwhile do not write (nor wait
    for a locked database)."""
    state.publish(JOB.key, MANIFESTS)
    images = service(ScriptedQueue())
    tries = []

    def refuse(key: str, now: float) -> None:
        tries.append(now)
        raise DatabaseUnavailable("the state database is locked by another process")

    with monkeypatch.context() as patched:
        patched.setattr(state, "touch", refuse)
        assert images.manifest(JOB.request, LATEST, [OCI_MANIFEST]) == OCI
        clock.advance(30)
        assert images.manifest(JOB.request, LATEST, [OCI_MANIFEST]) == OCI
    assert len(tries) == 1
    assert "is not recorded: the state database is locked by another process" in caplog.text
    assert state.used == {}
    clock.advance(30)
    images.manifest(JOB.request, LATEST, [OCI_MANIFEST])
    assert state.used == {JOB.key: clock()}


def test_the_thread_queue_refuses_builds_beyond_its_bound() -> None:
    state = MemoryState()
    builder = FakeBuilder(state, sample_manifests(), seconds=0)
    builder.release.clear()
    queue = ThreadBuildQueue(builder, state, workers=1, max_queued=1)
    try:
        for packages in (("a",), ("b",)):
            assert queue.build(sample_job(*packages), 0) is None
        assert queue.running(sample_job("a").key)
        with pytest.raises(BuildQueueFull):
            queue.build(sample_job("c"), 0)
        assert queue.build(sample_job("a"), 0) is None, "joining a queued build is free"
    finally:
        builder.release.set()
        queue.shutdown()


def test_a_client_that_hangs_up_frees_its_thread_at_once() -> None:
    state = MemoryState()
    builder = FakeBuilder(state, sample_manifests(), seconds=0)
    builder.release.clear()
    queue = ThreadBuildQueue(builder, state, workers=1)
    hung_up = threading.Event()
    threading.Timer(0.5, hung_up.set).start()
    try:
        started = time.monotonic()
        assert queue.build(sample_job(), wait=60, gone=hung_up.is_set) is None
        assert time.monotonic() - started < 5
    finally:
        builder.release.set()
        queue.shutdown()


def test_tasks_poll_a_held_build_whose_heartbeat_is_overdue_and_end_the_wait_if_down(
    state, tasks, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener whose database hangs hears nothing and says nothing: once a builder's
    heartbeat (a third of the lease) plus SLOW_POLL is overdue, the record is read; the
    database down, the wait ends with its error at once and the listener is closed."""
    queue = TaskBuildQueue(state, state, tasks, PICKUP, clock=clock, wait=fake_wait(clock), lease=9)
    start = clock()
    state.claim(JOB, "builder-a", 20)
    clock.after(0.5, lambda: state.listeners[JOB.key][0].stall())

    def down(key: str) -> None:
        raise DatabaseUnavailable("Firestore did not answer within 2s")

    clock.after(1, lambda: monkeypatch.setattr(state, "status", down))
    with pytest.raises(DatabaseUnavailable):
        queue.build(JOB, 60)
    assert clock() - start == 9 / 3 + SLOW_POLL
    deadline = time.monotonic() + 10
    while state.listeners[JOB.key][0].is_active:  # closed on a thread of its own
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_herd_that_waited_for_one_build_notes_its_answer_once(
    state, source, blobs, clock
) -> None:
    """One write per build and instance, not one per waiting request; the first kept."""
    notes: list[float] = []

    class Reports(MemoryState):
        def record_answer(self, key: str, at: float) -> None:
            notes.append(at)

    images = ImageService(
        source=source, images=state, blobs=blobs, builds=ScriptedQueue(*[PUBLISHED] * 3),
        wait=WAIT, failure_ttl=FAILURE_TTL, clock=clock, reports=Reports(clock),
    )  # fmt: skip
    for _ in range(3):
        assert images.image(JOB) == PUBLISHED
        clock.advance(1)
    images_module._NOTES.submit(lambda: None).result(10)  # the notes written
    assert len(notes) == 1
