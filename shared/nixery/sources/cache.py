"""Small thread-safe helpers: one lock per key, and answers kept for a while.

Looking a tag up costs I/O (a directory walk, `git ls-remote`, an HTTP request), so answers are
kept for a short time; a burst of requests for one tag costs one lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Clock = Callable[[], float]
_T = TypeVar("_T")


class KeyedLocks:
    """One lock per key, dropped once nobody holds or waits for it, so that work on one key is
    serialised without keeping a lock for every key ever seen (tags come from the internet)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._mutex:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class TTLCache(Generic[_T]):
    """Answers kept for `ttl` seconds. Lookups of one key are serialised so that a burst of
    requests for a tag costs one lookup; exceptions propagate and are not kept."""

    def __init__(self, ttl: float, clock: Clock) -> None:
        self._ttl = ttl
        self._clock = clock
        self._locks = KeyedLocks()
        self._mutex = threading.Lock()
        # Insertion order is (nearly) expiry order, so expired entries are dropped from the front;
        # one that is not, because a slow lookup finished late, is still never returned.
        self._entries: dict[str, tuple[float, _T]] = {}

    def get(self, key: str, compute: Callable[[], _T]) -> _T:
        with self._locks.hold(key):
            now = self._clock()
            with self._mutex:
                while self._entries:
                    oldest = next(iter(self._entries))
                    if self._entries[oldest][0] > now:
                        break
                    del self._entries[oldest]
                entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return entry[1]
            value = compute()
            with self._mutex:
                # Re-inserted rather than updated, to move the key to the back.
                self._entries.pop(key, None)
                self._entries[key] = (now + self._ttl, value)
            return value
