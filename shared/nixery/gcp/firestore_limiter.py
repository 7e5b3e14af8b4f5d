"""Each client's new builds, counted in Firestore: requests land on many instances.

One counter document per client and window (fixed windows of NIXERY_CLIENT_BUILDS' length:
across the edge of two a client may start up to twice its count). The document id is a hash
of the address, so no address is stored; ``expires`` is the field a Firestore TTL policy
deletes old counters by.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from google.cloud import firestore

from nixery.config import Rate
from nixery.errors import DatabaseUnavailable
from nixery.gcp.deadline import BACKEND_TIMEOUT, Deadline, bounded


class FirestoreLimiter:
    def __init__(
        self,
        client: firestore.Client,
        prefix: str,
        rate: Rate,
        clock: Callable[[], float] = time.time,
        timeout: float = BACKEND_TIMEOUT,
    ) -> None:
        self.client = client
        self.counters = client.collection(prefix + "clients")
        self.rate = rate
        self.clock = clock
        self.deadline = Deadline("Firestore", DatabaseUnavailable, timeout)

    @bounded
    def admit(self, client: str) -> float | None:
        now = self.clock()
        window = int(now // self.rate.window)
        ends = (window + 1) * self.rate.window
        name = hashlib.sha256(client.encode()).hexdigest()[:32]
        ref = self.counters.document(f"{name}-{window}")

        @firestore.transactional
        def charge(transaction: firestore.Transaction) -> float | None:
            count = (ref.get(transaction=transaction).to_dict() or {}).get("count", 0)
            if count >= self.rate.count:
                return ends - now
            expires = datetime.fromtimestamp(ends, UTC)
            transaction.set(ref, {"count": count + 1, "expires": expires})
            return None

        wait: float | None = charge(self.client.transaction())
        return wait
