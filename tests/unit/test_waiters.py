"""The bounds on requests waiting for builds: in all, per address, per image; what is
refused is answered at once and its build goes on; the defaults follow the threads."""

from __future__ import annotations

import contextlib
import logging

import pytest

from nixery.config import Env, WaitLimits, local_settings, wait_limits
from nixery.errors import ConfigError, TooManyWaiters
from nixery.gcp.settings import registry_settings
from nixery.limits import client_key
from nixery.local.thread_queue import ThreadBuildQueue
from nixery.logs import flush_tallies
from nixery.request import Tag
from nixery.service.images import Caller, ImageService
from nixery.service.waiters import LOG_REFUSALS, Waiters
from tests.helpers.fakes import (
    REVISION,
    FakeBuilder,
    FakeClock,
    MemoryBlobStore,
    MemoryState,
    StaticSource,
    sample_job,
    sample_manifests,
)
from tests.unit.test_gcp_settings import REGISTRY


def refusal(waiters: Waiters, key: str, client: str) -> str | None:
    """The variable that refuses one more waiter, if any; nothing is held after."""
    with waiters.waiting(key, client) as refused:
        return None if refused is None else refused.detail["limit"]


def test_each_bound_refuses_one_more_and_releases_on_exit() -> None:
    waiters = Waiters(WaitLimits(total=4, per_client=2, per_build=3))
    with contextlib.ExitStack() as held:
        for key, client in [("a", "1"), ("a", "2"), ("b", "1")]:
            assert held.enter_context(waiters.waiting(key, client)) is None
        assert refusal(waiters, "c", "1") == "NIXERY_CLIENT_WAITERS"
        assert held.enter_context(waiters.waiting("a", "3")) is None
        assert refusal(waiters, "a", "4") == "NIXERY_BUILD_WAITERS"
        assert refusal(waiters, "c", "4") == "NIXERY_MAX_WAITERS"
    assert refusal(waiters, "c", "1") is None
    with waiters.waiting("c", "1"), waiters.waiting("c", "1"):
        assert refusal(waiters, "c", "1") == "NIXERY_CLIENT_WAITERS"
    assert waiters._total == 0 and not waiters._clients and not waiters._builds


def test_refusals_are_logged_as_one_line_per_address_and_bound(caplog) -> None:
    """A flood's refusals, a line each, would cost more than refusing them: each address's
    are counted, and written in one line LOG_REFUSALS seconds after the last lines, by the
    next refusal or the server's maintenance (``flush_tallies``)."""
    caplog.set_level(logging.WARNING, "nixery.service.waiters")
    clock = FakeClock()
    waiters = Waiters(WaitLimits(total=4, per_client=1, per_build=4), clock)
    with waiters.waiting("a", "192.0.2.1"):
        for _ in range(30):
            assert refusal(waiters, "b", "192.0.2.1") == "NIXERY_CLIENT_WAITERS"
        assert not caplog.records
        clock.advance(LOG_REFUSALS)
        flush_tallies()
    assert [r.getMessage() for r in caplog.records] == [
        f"address 192.0.2.1, NIXERY_CLIENT_WAITERS: refused 30 requests waiting for builds in "
        f"the last {LOG_REFUSALS:.0f} s"
    ]


def test_a_refused_request_is_answered_at_once_and_its_build_goes_on() -> None:
    state = MemoryState()
    builder = FakeBuilder(state, sample_manifests(), seconds=0)
    builder.release.clear()
    queue = ThreadBuildQueue(builder, state, workers=1)
    service = ImageService(
        source=StaticSource({"latest": REVISION}), images=state, blobs=MemoryBlobStore(),
        builds=queue, wait=60, failure_ttl=300,
        waiters=Waiters(WaitLimits(total=1, per_client=1, per_build=1)),
    )  # fmt: skip
    job = sample_job("refused")
    assert service.waiters is not None
    try:
        with (
            service.waiters.waiting("another", "somebody"),
            pytest.raises(TooManyWaiters, match="the build goes on"),
        ):
            service.manifest(job.request, Tag("latest"), [], Caller("1.2.3.4"))
        assert builder.started.wait(10) and builder.calls == [job]
        assert queue.running(job.key)
    finally:
        builder.release.set()
        queue.shutdown()


def test_an_ipv6_64_is_one_address_for_the_bounds() -> None:
    """Two addresses of one IPv6 /64 are one client (``client_key``): with one waiter per
    address, the second is refused at once, as another host of the same network would be."""
    state = MemoryState()
    builder = FakeBuilder(state, sample_manifests(), seconds=0)
    builder.release.clear()
    queue = ThreadBuildQueue(builder, state, workers=1)
    service = ImageService(
        source=StaticSource({"latest": REVISION}), images=state, blobs=MemoryBlobStore(),
        builds=queue, wait=1, failure_ttl=300,
        waiters=Waiters(WaitLimits(total=4, per_client=1, per_build=4)),
    )  # fmt: skip
    job = sample_job("one-network")
    assert service.waiters is not None
    try:
        with (
            service.waiters.waiting("another", client_key("2001:db8::1")),
            pytest.raises(TooManyWaiters) as refused,
        ):
            service.manifest(job.request, Tag("latest"), [], Caller("2001:db8::2"))
        assert refused.value.detail["limit"] == "NIXERY_CLIENT_WAITERS"
    finally:
        builder.release.set()
        queue.shutdown()


def test_the_defaults_follow_the_threads() -> None:
    assert wait_limits(Env({}), "NIXERY_SERVER_THREADS", 64) == WaitLimits(32, 8, 16)
    assert wait_limits(Env({}), "THREADS", 2) == WaitLimits(1, 1, 1)
    local = local_settings({"STORAGE_PATH": "/tmp/x", "NIXERY_SERVER_THREADS": "16"})
    assert local.waiters == WaitLimits(8, 2, 4)
    assert registry_settings({**REGISTRY, "THREADS": "80"}).waiters == WaitLimits(40, 10, 20)
    env = Env({"NIXERY_MAX_WAITERS": "4"})
    assert wait_limits(env, "NIXERY_SERVER_THREADS", 64) == WaitLimits(4, 4, 4)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NIXERY_MAX_WAITERS": "64"}, "NIXERY_MAX_WAITERS.*under NIXERY_SERVER_THREADS"),
        ({"NIXERY_MAX_WAITERS": "0"}, "NIXERY_MAX_WAITERS"),
        ({"NIXERY_CLIENT_WAITERS": "33"}, "NIXERY_CLIENT_WAITERS"),
        ({"NIXERY_BUILD_WAITERS": "x"}, "NIXERY_BUILD_WAITERS"),
    ],
)
def test_invalid_bounds_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        wait_limits(Env(env), "NIXERY_SERVER_THREADS", 64)
