"""Answers kept in memory, bounded, and one lock per key.

A function instance lives long and sees many digests and tags: an unbounded cache would grow
with the registry, so the oldest entries go once a cache is full (``BoundedCache``: the least
recently used; ``Memo``: the least recently computed). Looking a tag up costs I/O (a directory
walk, `git ls-remote`, an HTTP request), so ``Memo`` computes an answer once per key at a
time: a burst of requests for one tag costs one lookup.

Server threads share each cache. ``BoundedCache`` takes a lock of its own on every call;
``Memo`` is read without one, since every pull by tag asks it.

Reading without a lock: the warm path (``Memo``, ``ImageService``'s answers from memory,
``_WarmManifests``' names, ``FileBlobStore``'s verified files) reads dicts and sets that
other threads write, and takes no lock there, so that no pull waits on another. This rests on
one assumption, written here once: a single operation on a dict or set (a get, ``in``, an
item set or deleted, ``pop``, ``add``, ``discard``, ``clear``, replacing an attribute that
holds one) is atomic, under the GIL and under free-threaded 3.13t's per-object locks alike.
A sequence of them is not: writers make theirs under a lock, and readers only make single
operations (no reader iterates a dict another thread writes).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Generic, TypeVar

from cachetools import Cache, LRUCache, TTLCache

T = TypeVar("T")
Clock = Callable[[], float]

# Entries per cache; a manifest is ~1 KB, so this bounds each cache to a few MB.
CACHE_SIZE = 4096
# Tags' answers kept at once: a flood of made-up tags costs memory and, once it is full, a
# lookup again of the real tags' answers (the oldest go first).
MEMO_SIZE = 100_000
# Where this process's periods begin, as a fraction of their length: instances started apart
# do not all drop what they keep at the same moment (and read the state at once).
_OFFSET = random.random()


def period(length: float, clock: Clock = time.time) -> int:
    """The number of the current period of ``length`` seconds by ``clock``, its boundaries
    offset by a fraction of ``length`` drawn once per process."""
    return int(clock() // length + _OFFSET)


# Seconds a miss waits for another caller's read of its key: one service call's bound
# (NIXERY_BACKEND_TIMEOUT's default), so a stuck read holds no herd much past it.
SHARED_READ_WAIT = 10.0


class BoundedCache(Generic[T]):
    def __init__(
        self,
        size: int = CACHE_SIZE,
        ttl: float | None = None,
        clock: Clock = time.monotonic,
        every: float | None = None,
        patience: float = SHARED_READ_WAIT,
    ) -> None:
        """``ttl``: seconds by ``clock`` an entry is kept from when it was last kept, for
        answers that are true only for a while; ``every``: all entries go when ``period``
        of that length moves, so that what a period found out was all read within it.
        ``patience``: seconds a miss waits for the read another caller is making of its key
        before it reads for itself."""
        self._entries: Cache[str, T] = TTLCache(size, ttl, timer=clock) if ttl else LRUCache(size)
        self._lock = threading.Lock()
        self._reads: dict[str, Future[T | None]] = {}
        self._patience = patience
        self._clock, self._every = clock, every
        self._period = period(every, clock) if every else 0

    def get(self, key: str) -> T | None:
        with self._lock:
            self._expire()
            return self._entries.get(key)

    def fetch(self, key: str, read: Callable[[], T | None]) -> T | None:
        """The kept value, else what ``read`` gives, kept unless None. Misses of one key share
        the first one's read, its None or its exception included, rather than each reading:
        the herd of requests that hears an image published at once costs one read, and a
        read that fails fails them all at once. A hit only takes the cache's own brief lock,
        never waits for a read."""
        with self._lock:
            self._expire()
            if (value := self._entries.get(key)) is not None:
                return value
            shared = self._reads.get(key)
            if shared is None:
                mine: Future[T | None] = Future()
                self._reads[key] = mine
        if shared is not None:
            try:
                return shared.result(timeout=self._patience)
            except FutureTimeout:  # a stuck read: this one makes its own
                value = read()
                return None if value is None else self.keep(key, value)
        try:
            value = read()
            if value is not None:
                self.keep(key, value)
            mine.set_result(value)
            return value
        except BaseException as e:
            mine.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._reads[key]

    def keep(self, key: str, value: T) -> T:
        with self._lock:
            self._expire()
            self._entries[key] = value
        return value

    def _expire(self) -> None:
        if self._every and (now := period(self._every, self._clock)) != self._period:
            self._entries.clear()
            self._period = now

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


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


class Memo(Generic[T]):
    """Answers kept for ``ttl`` seconds by ``clock`` from when their lookup started (an answer
    is as old as the question), each computed once at a time; exceptions propagate and are
    not kept. A ``None`` answer is kept like any other.

    A fresh answer is read from a plain dict, without a lock: every pull by tag asks, and
    a lock there would be one that all of them wait on. Only a lookup takes locks."""

    def __init__(self, ttl: float, clock: Clock, size: int = MEMO_SIZE) -> None:
        self._ttl = ttl
        self._clock = clock
        self._size = size
        # key -> (when its answer goes stale, the answer); written under ``_mutex`` only, read
        # without a lock (see the module's docstring), in the order the answers go stale
        self._entries: dict[str, tuple[float, T]] = {}
        self._locks = KeyedLocks()
        self._mutex = threading.Lock()

    def get(self, key: str, compute: Callable[[], T]) -> T:
        found = self._entries.get(key)
        if found is not None and self._clock() < found[0]:
            return found[1]
        with self._locks.hold(key):
            found = self._entries.get(key)
            if found is not None and self._clock() < found[0]:
                return found[1]
            stale = self._clock() + self._ttl
            value = compute()
            with self._mutex:
                if len(self._entries) >= self._size:
                    self._evict()
                self._entries.pop(key, None)  # to the end: the oldest answers go first
                self._entries[key] = (stale, value)
            return value

    def _evict(self) -> None:
        """Under ``_mutex``, makes room from the front, where answers go stale first: the
        stale ones there, and the oldest others up to a tenth. It looks no further than
        what goes, so each answer stored costs a bounded share of the evictions."""
        now, tenth = self._clock(), max(1, self._size // 10)
        going: list[str] = []
        for key, (until, _) in self._entries.items():
            if len(going) >= tenth and until > now:
                break
            going.append(key)
        for key in going:
            del self._entries[key]
