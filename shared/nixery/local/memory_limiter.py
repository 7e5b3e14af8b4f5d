"""How many new builds one client may cause: the limit a public mirror needs most.

A pull of an image built before costs a few reads and is free; a new build costs minutes of a
builder and bytes of storage, and a stranger can ask for endless new images (any package
list, any channel). So each client (its address, as the registry's edge sees it) may start at
most ``count`` new builds in any ``window`` seconds; one more is answered 429 with the
seconds until it would be allowed. Joining a build that runs already is free.

Local mode counts in memory, with a sliding window; Google Cloud mode counts in Firestore
(``gcp.firestore_limiter``), since its requests land on many instances.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from cachetools import TTLCache

from nixery.config import Rate

# Clients remembered at once; beyond, the least recently seen are forgotten (and so freed).
MAX_CLIENTS = 100_000


class MemoryLimiter:
    """A sliding window per client, in this process's memory."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._starts: TTLCache[str, deque[float]] = TTLCache(MAX_CLIENTS, rate.window, timer=clock)
        self._lock = threading.Lock()

    def admit(self, client: str) -> float | None:
        now = self.clock()
        with self._lock:
            starts = self._starts.get(client) or deque()
            while starts and starts[0] <= now - self.rate.window:
                starts.popleft()
            if len(starts) >= self.rate.count:
                return starts[0] + self.rate.window - now
            starts.append(now)
            self._starts[client] = starts  # re-set: its time to live starts again
            return None
