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

import time
from collections.abc import Callable

from nixery.config import Rate
from nixery.limits import SlidingWindows

# Clients remembered at once; beyond, the least recently seen are forgotten (and so freed).
MAX_CLIENTS = 100_000


class MemoryLimiter:
    """A sliding window per client, in this process's memory."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self._windows = SlidingWindows(rate, MAX_CLIENTS, clock)

    def admit(self, client: str) -> float | None:
        full = self._windows.admit((client,))
        return None if full is None else full[0]
