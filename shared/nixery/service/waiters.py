"""Requests waiting for builds, bounded in all, per address and per image.

A request for an image being built holds its thread (local mode) or one of the instance's
concurrent requests (the function) for as long as it waits, up to NIXERY_BUILD_WAIT; joining
a running build costs no new build, so the new-build limits do not bound it. Unbounded, a few
addresses asking for slow new images would hold every thread, and cached pulls, which take
milliseconds, would find none. Beyond a bound the request is answered at once instead
(``TooManyWaiters``, a 503 with Retry-After), and its build goes on without it. Refusals are
logged as one line per address and bound every ``LOG_REFUSALS`` seconds, with their count,
as refused logins are: a flood's, a line each, would cost more than refusing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nixery.config import WaitLimits
from nixery.errors import TooManyWaiters
from nixery.logs import Tally

log = logging.getLogger(__name__)
LOG_REFUSALS = 10.0  # seconds between the lines that count the refusals


class Waiters:
    def __init__(self, limits: WaitLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._total = 0
        self._clients: Counter[str] = Counter()
        self._builds: Counter[str] = Counter()
        self._refused = Tally(
            log, "%s: refused %d requests waiting for builds in the last %.0f s",
            "client", LOG_REFUSALS, clock,
        )  # fmt: skip

    @contextmanager
    def waiting(self, key: str, client: str) -> Iterator[TooManyWaiters | None]:
        """Counts a request as waiting for the build of ``key`` while the block runs; yields
        None, or, beyond a bound, the refusal to raise if the build is not done at once (the
        request then must not wait), without counting it."""
        with self._lock:
            refusal = self._refusal(key, client)
            if refusal is None:
                self._total += 1
                self._clients[client] += 1
                self._builds[key] += 1
        if refusal is not None:
            self._refused.count(f"address {client}, {refusal.detail['limit']}")
            yield refusal
            return
        try:
            yield None
        finally:
            with self._lock:
                self._total -= 1
                for counter, name in ((self._clients, client), (self._builds, key)):
                    counter[name] -= 1
                    if not counter[name]:
                        del counter[name]

    def _refusal(self, key: str, client: str) -> TooManyWaiters | None:
        limits = self.limits
        if self._clients[client] >= limits.per_client:
            return _refused(
                f"this address has {limits.per_client} requests waiting for builds, as many "
                "as one address may", "NIXERY_CLIENT_WAITERS", limits.per_client,
            )  # fmt: skip
        if self._builds[key] >= limits.per_build:
            return _refused(
                f"{limits.per_build} requests wait for this image's build, as many as may "
                "wait for one image", "NIXERY_BUILD_WAITERS", limits.per_build,
            )  # fmt: skip
        if self._total >= limits.total:
            return _refused(
                f"{limits.total} requests wait for builds, as many as this registry lets "
                "wait at once", "NIXERY_MAX_WAITERS", limits.total,
            )  # fmt: skip
        return None


def _refused(cause: str, variable: str, limit: int) -> TooManyWaiters:
    return TooManyWaiters(
        f"{cause}; the build goes on: retry later", {"limit": variable, "waiting": limit}
    )
