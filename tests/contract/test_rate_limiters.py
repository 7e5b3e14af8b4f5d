"""Each client's new builds, limited for a public mirror: one suite over the in-memory and
the Firestore limiter, and how the image service charges them."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from nixery.config import Rate
from nixery.errors import TooManyBuilds
from nixery.local.memory_limiter import MemoryLimiter
from nixery.ports import Limiter
from nixery.service.images import Caller
from tests.helpers.fakes import (
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


def test_an_ipv6_client_is_charged_by_its_64() -> None:
    """An IPv6 client may send from any address of its /64 (at least what it is given): each
    address its own count would be no limit."""
    limiter = MemoryLimiter(Rate(1, 3600.0))
    service = make_service(MemoryState(), ScriptedQueue(None, None), limiter)
    with pytest.raises(Exception, match="still being built"):
        service.image(sample_job(), Caller("2001:db8:0:1::1"))
    with pytest.raises(TooManyBuilds):
        service.image(sample_job("jq"), Caller("2001:db8:0:1:ffff::2"))
    with pytest.raises(Exception, match="still being built"):
        service.image(sample_job("jq"), Caller("2001:db8:0:2::1")), "another /64"
