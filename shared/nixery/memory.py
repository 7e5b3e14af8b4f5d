"""Keeping answers (published images, manifests, blob sizes, the pages' data) in memory, bounded.

A function instance lives long and sees many digests: an unbounded cache would grow with the
registry, so the least recently used entry goes when a cache is full. Server threads share
each cache, so each has its own lock.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from cachetools import Cache, LRUCache, TTLCache

T = TypeVar("T")

# Entries per cache; a manifest is ~1 KB, so this bounds each cache to a few MB.
CACHE_SIZE = 4096


class BoundedCache(Generic[T]):
    def __init__(self, size: int = CACHE_SIZE, ttl: float | None = None) -> None:
        """``ttl``: seconds an entry is kept, for answers that are true only for a while."""
        self._entries: Cache[str, T] = TTLCache(size, ttl) if ttl else LRUCache(size)
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            return self._entries.get(key)

    def keep(self, key: str, value: T) -> T:
        with self._lock:
            self._entries[key] = value
        return value

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)
