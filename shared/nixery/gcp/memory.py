"""Keeping immutable answers (published images, manifests, blob sizes) in memory, bounded.

A function instance lives long and sees many digests: an unbounded cache would grow with
the registry, so the oldest entry goes when the cache is full.
"""

from __future__ import annotations

import threading
from typing import TypeVar

T = TypeVar("T")

# Entries per cache; a manifest is ~1 KB, so this bounds each cache to a few MB.
CACHE_SIZE = 4096
# Server threads share the caches; evicting while another thread inserts would fail.
_LOCK = threading.Lock()


def keep(cache: dict[str, T], key: str, value: T) -> T:
    """Stores ``value`` under ``key``, dropping the oldest entry if the cache is full."""
    with _LOCK:
        if len(cache) >= CACHE_SIZE:
            cache.pop(next(iter(cache)))  # dicts keep insertion order
        cache[key] = value
    return value
