"""Limits for a public mirror, without HTTP: each client's new builds (one suite over the
in-memory and the Firestore limiter), the build queue's bound, and hung-up clients."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from nixery.config import Rate
from nixery.errors import BuildQueueFull, TooManyBuilds
from nixery.local.memory_limiter import MemoryLimiter
from nixery.local.thread_queue import ThreadBuildQueue
from nixery.ports import Limiter
from nixery.service.images import Caller
from tests.helpers.fakes import (
    FakeBuilder,
    FakeClock,
    MemoryState,
    ScriptedQueue,
    sample_job,
    sample_manifests,
)

RATE = Rate(3, 60.0)


def _memory(clock: FakeClock) -> Limiter:
    return MemoryLimiter(RATE, clock=clock)


def _firestore(clock: FakeClock, request: pytest.FixtureRequest) -> Limiter:
    from nixery.gcp.firestore_limiter import FirestoreLimiter

    client = request.getfixturevalue("firestore_client")
    return FirestoreLimiter(client, f"l{uuid.uuid4().hex[:8]}_", RATE, clock=clock)


@pytest.fixture(params=["memory", pytest.param("firestore", marks=pytest.mark.e2e)])
def limiter_at(request: pytest.FixtureRequest) -> Callable[[FakeClock], Limiter]:
    if request.param == "memory":
        return _memory
    return lambda clock: _firestore(clock, request)


def test_a_client_gets_its_count_of_builds_per_window_and_others_theirs(limiter_at) -> None:
    clock = FakeClock(now=6000.0)  # the start of a window for fixed windows too
    limiter = limiter_at(clock)
    assert [limiter.admit("10.0.0.1") for _ in range(3)] == [None] * 3
    wait = limiter.admit("10.0.0.1")
    assert wait is not None and 0 < wait <= RATE.window
    assert limiter.admit("10.0.0.2") is None, "another client has its own count"
    clock.advance(RATE.window + 1)
    assert limiter.admit("10.0.0.1") is None, "a window later it may build again"


def test_the_memory_limiter_slides() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(Rate(2, 10.0), clock=clock)
    assert limiter.admit("a") is None
    clock.advance(6)
    assert limiter.admit("a") is None
    assert limiter.admit("a") == pytest.approx(4.0), "the first start frees its slot at 10 s"
    clock.advance(4)
    assert limiter.admit("a") is None


def make_service(state: MemoryState, queue, limiter: Limiter | None):
    from nixery.service.images import ImageService
    from tests.helpers.fakes import REVISION, MemoryBlobStore, StaticSource

    return ImageService(source=StaticSource({"latest": REVISION}), images=state,
                        blobs=MemoryBlobStore(), builds=queue, wait=5, failure_ttl=300,
                        limiter=limiter)  # fmt: skip


def test_only_new_builds_are_charged() -> None:
    """A published image, or a build under way, costs the client nothing."""
    state = MemoryState()
    job = sample_job()
    limiter = MemoryLimiter(Rate(1, 3600.0))
    queue = ScriptedQueue(None, None)  # still building, twice
    service = make_service(state, queue, limiter)
    caller = Caller("10.0.0.9")
    with pytest.raises(Exception, match="still being built"):
        service.image(job, caller)
    queue.under_way.add(job.key)
    with pytest.raises(Exception, match="still being built"):
        service.image(job, caller)  # joins the running build: not charged
    with pytest.raises(TooManyBuilds) as raised:
        service.image(sample_job("jq"), caller)
    assert 3500 < raised.value.retry_after <= 3600
    state.publish(job.key, sample_manifests())
    assert service.image(job, caller), "a published image is free"


def test_the_thread_queue_refuses_builds_beyond_its_bound() -> None:
    state = MemoryState()
    builder = FakeBuilder(state, sample_manifests(), seconds=0)
    builder.release.clear()
    queue = ThreadBuildQueue(builder, state, workers=1, max_queued=1)  # type: ignore[arg-type]
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
    queue = ThreadBuildQueue(builder, state, workers=1)  # type: ignore[arg-type]
    hung_up = threading.Event()
    threading.Timer(0.5, hung_up.set).start()
    try:
        started = time.monotonic()
        assert queue.build(sample_job(), wait=60, gone=hung_up.is_set) is None
        assert time.monotonic() - started < 5
    finally:
        builder.release.set()
        queue.shutdown()
