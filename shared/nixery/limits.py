"""What limits per client count by, and the sliding windows that count in memory.

A client is known by its address, but an IPv6 client is given a /64 at least and can send from
any address in it: a limit per IPv6 address would be no limit. So every per-client limit (new
builds, connections, failed logins) counts by ``client_key``: an IPv4 address, or an IPv6
address's /64.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

from nixery.config import Rate

IPV6_PREFIX = 64  # what one subscriber is given, at least (RFC 6177)


def client_key(address: str) -> str:
    """The key a client's limits count by: its IPv4 address, or its IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # no address (a test's client, a Unix socket): counted as given
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class SlidingWindows:
    """Events per key in the last ``rate.window`` seconds by ``clock``, for at most ``size``
    keys: beyond, those seen least recently are forgotten (and so freed). A key holds at most
    ``rate.count`` times, as a tuple: the most compact of Python's sequences."""

    def __init__(self, rate: Rate, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._times: TTLCache[str, tuple[float, ...]] = TTLCache(size, rate.window, timer=clock)
        self._lock = threading.Lock()

    def admit(self, keys: tuple[str, ...]) -> tuple[float, str] | None:
        """Counts an event against every one of ``keys``, or none when one of them is full:
        then the seconds until it would be admitted, and the key that waits longest (the first
        such of ``keys``)."""
        with self._lock:
            now = self.clock()
            windows = [self._window(key, now) for key in keys]
            full = [(w[0] + self.rate.window - now, key) for key, w in zip(keys, windows,
                    strict=True) if len(w) >= self.rate.count]  # fmt: skip
            if full:
                return max(full, key=lambda f: f[0])
            for key, window in zip(keys, windows, strict=True):
                self._times[key] = (*window, now)  # its time to live starts again
            return None

    def take_back(self, keys: tuple[str, ...]) -> None:
        """Forgets the latest event of each of ``keys``."""
        with self._lock:
            for key in keys:
                if window := self._times.get(key):
                    self._times[key] = window[:-1]

    def count(self, key: str) -> int:
        with self._lock:
            return len(self._window(key, self.clock()))

    def _window(self, key: str, now: float) -> tuple[float, ...]:
        window = self._times.get(key, ())
        return tuple(t for t in window if t > now - self.rate.window)
