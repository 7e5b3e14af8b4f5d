"""The local HTTP server: waitress, hardened against clients that are slow on purpose.

Waitress reads requests on one thread and serves them on a pool, but by default it closes a
connection only after 120 s without a byte and takes at most 100 connections: a hundred
clients each sending a header line every few seconds hold every connection forever, and
nobody else gets in. Here a request must arrive whole within ``header_timeout`` of its first
byte, an idle connection goes after ``idle_timeout``, one address may hold at most
``per_client`` connections, headers and bodies are small (nothing is pushed here), and a TLS
handshake is answered at once with a plain-HTTP error.

A request that waits for a build holds a pool thread; the server reads ahead on each
connection, so that the request can see its client hang up
(``waitress.client_disconnected``) and let the thread go.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any, cast

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from nixery.config import ConnectionLimits

log = logging.getLogger(__name__)

# A request line with a 255-character name and a digest, and a client's usual headers, fit
# many times over; nothing is pushed here, so bodies are empty.
MAX_HEADER_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10


class _Channel(HTTPChannel):
    """A connection: refuses TLS at once, and remembers when its current request began."""

    _first = True
    began: float | None = None  # time.monotonic() of the unfinished request's first byte

    def __init__(self, server: _Server, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map=map)
        client = addr[0]
        held = sum(1 for c in server.channels() if c.addr[0] == client)
        if held > server.limits.per_client:  # itself included
            log.warning("refused a connection from %s: it holds %d already", client, held - 1)
            self.will_close = True

    def received(self, data: bytes) -> bool:
        # skopeo, podman and containerd try HTTPS first even for an insecure registry; an HTTP
        # server that waits for a request line makes each wait out a 10 s handshake timeout.
        if self._first and data:
            self._first = False
            if data[:1] == b"\x16":  # TLS record type: handshake
                self.send(b"HTTP/1.0 400 Bad Request\r\nConnection: close\r\n\r\n")
                self.handle_close()
                return False
        now = time.monotonic()
        accepted: bool = super().received(data)
        if self.request is None:
            self.began = None
        elif self.began is None:
            self.began = now
        return accepted


class _Server(TcpWSGIServer):
    limits: ConnectionLimits

    def channels(self) -> list[_Channel]:
        # The stubs call active_channels one channel; it is a dict of them by descriptor.
        return list(cast(dict[int, _Channel], self.active_channels).values())

    def maintenance(self, now: int) -> None:
        """Also closes connections whose request has taken too long to arrive."""
        super().maintenance(now)
        cutoff = time.monotonic() - self.limits.header_timeout
        for channel in self.channels():
            if channel.began is not None and channel.began < cutoff:
                log.warning("closed a connection from %s: its request came too slowly",
                            channel.addr[0])  # fmt: skip
                channel.will_close = True


def create_server(app: Flask, host: str, port: int, limits: ConnectionLimits) -> _Server:
    # Each connection is a file descriptor: make room for the limit, within the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.connections + limits.threads + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    server = _Server(
        app,
        host=host,
        port=port,
        ident="nixery",
        threads=limits.threads,
        connection_limit=limits.connections,
        channel_timeout=limits.idle_timeout,
        cleanup_interval=1,
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=MAX_BODY_BYTES,
        channel_request_lookahead=1,
        # X-Forwarded-*: the app trusts as many proxies as NIXERY_TRUSTED_PROXIES says, and
        # none by default; waitress, which trusts none, would drop what the proxies add.
        clear_untrusted_proxy_headers=False,
    )
    server.limits = limits
    server.channel_class = _Channel
    return server
