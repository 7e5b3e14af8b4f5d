"""The local HTTP server: waitress, hardened against clients that are slow on purpose.

Waitress reads requests on one thread and serves them on a pool, but by default it closes a
connection only after 120 s without a byte and takes at most 100 connections: a hundred
clients each sending a header line every few seconds hold every connection forever, and
nobody else gets in. Here a request must arrive whole within ``header_timeout`` of its first
byte (a connection's first request, of its accept: a connection that never sends a byte is
closed as soon), an idle connection goes after ``idle_timeout``, one address may hold at most
``per_client`` connections, headers and bodies are small (nothing is pushed here), and a TLS
handshake is answered at once with a plain-HTTP error. At the connection limit, the
connection that has waited longest for a request (silent ones first) is closed to let a new
one in: a thousand silent connections from many addresses hold every connection for the
timeouts' length otherwise, and a new client would wait as long. A connection accepted less
than ``ACCEPT_GRACE`` ago is never closed so: it is silent only because it has not been read
yet, and closing it would turn away the very client the room was made for.

A request that waits for a build holds a pool thread (how many may, ``service.waiters``); the
server reads ahead on each connection, so that the request can see its client hang up
(``waitress.client_disconnected``) and let the thread go.

A blob (a file the app returns as ``wsgi.file_wrapper``) goes to the socket with sendfile:
the kernel copies it from the page cache, where waitress would read each chunk into Python
and write it back. A file the kernel will not sendfile goes as waitress sends it, as
``socket.sendfile`` falls back. That override copies waitress' ``_flush_some`` (3.0.2, pinned
in shared/pyproject.toml; a test fails on another version).

Requests wait for a pool thread in turns by address (``client_key``), not in arrival order: a
flood of cheap requests (wrong passwords answered 429) on many connections from a few
addresses would otherwise queue ahead of every other client, which then waits for the whole
flood to be answered. Each address's requests still go in their order, and a connection has
at most two requests read (waitress' lookahead), so the rest of a flood waits unread. Waitress
logs a line for each request that waits for a thread (thousands a second in a flood, each
costing the pool's lock and the GIL); here one line a second says how many waited.

After a login refused for too many failures (a 429 the app marks, ``LOGIN_THROTTLED``) a
connection is not read for ``THROTTLED_PAUSE``: a client told to come back later that asks
again at once on the same connection (a flood of wrong passwords on keep-alive connections,
2,000 a second) has its next request read a second later, without a thread held, rather than
take the event loop's time (reading, answering) from everyone else. Other 429s (the new-build
limit) do not pause: dockerd's next request on its pooled connection may be a cached pull.

Behind trusted proxies (``NIXERY_TRUSTED_PROXIES``) every connection is a proxy's: a request
takes the turn of the client the proxies name in X-Forwarded-For (ProxyFix's rule, as the app
reads it), and no connection is paused, since a proxy's pooled connection carries the next
request of anybody.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import time
from collections import Counter, deque
from typing import Any, cast

from flask import Flask
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import Task, ThreadedTaskDispatcher, WSGITask
from waitress.wasyncore import _DISCONNECTED  # type: ignore[attr-defined]  # not in the stubs
from werkzeug.http import parse_list_header

from nixery.config import ConnectionLimits
from nixery.http.protocol import LOGIN_THROTTLED
from nixery.limits import client_key
from nixery.logs import flush_tallies

log = logging.getLogger(__name__)

# A request line with a 255-character name and a digest, and a client's usual headers, fit
# many times over; nothing is pushed here, so bodies are empty.
MAX_HEADER_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10
# What sendfile says of a file it cannot send (a file system without it, an offset past its
# limits): such a file goes as waitress sends it, if none of it has gone yet.
_REFUSED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EOVERFLOW}

THROTTLED_PAUSE = 1.0  # seconds a connection is not read after a login's 429
ACCEPT_GRACE = 1.0  # seconds after its accept a connection is not closed to make room
ROOM_INTERVAL = 0.1  # seconds between two looks for room to make at the connection limit


class _Task(WSGITask):
    def build_response_header(self) -> bytes:
        # Before a byte is sent: the client's next request may come as soon as it is.
        channel = cast(_Channel, self.channel)
        if self.environ and self.environ.get(LOGIN_THROTTLED) and not channel.proxied:
            channel.paused_until = time.monotonic() + THROTTLED_PAUSE
        return super().build_response_header()


class _Channel(HTTPChannel):
    """A connection: refuses TLS at once, remembers when its current request began, and is
    not read for a while after a login's 429."""

    task_class = _Task
    silent = True  # no byte received yet
    client = ""  # what its address's limits count by
    proxied = False  # a trusted proxy's: its requests are anybody's
    paused_until = 0.0  # time.monotonic() until which it is not read (after a login's 429)

    def __init__(self, server: _Server, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map=map)
        # time.monotonic() of the unfinished request's first byte; the first request's
        # deadline counts from the accept, so that a silent connection is closed as soon.
        self.accepted = time.monotonic()
        self.began: float | None = self.accepted
        self.client = client_key(addr[0])
        self.proxied = bool(server.task_dispatcher.trusted_proxies)
        held = sum(1 for c in server.channels() if c.client == self.client)
        if held > server.limits.per_client:  # itself included
            log.warning("refused a connection from %s: it holds %d already", addr[0], held - 1)
            self.will_close = True

    def readable(self) -> bool:
        return super().readable() and not self.paused()

    def handle_read(self) -> None:
        # A pause may begin while the loop waits on a readable() from before it.
        if not self.paused():
            super().handle_read()

    def paused(self) -> bool:
        return bool(self.paused_until) and self.paused_until > time.monotonic()

    def received(self, data: bytes) -> bool:
        # skopeo, podman and containerd try HTTPS first even for an insecure registry; an HTTP
        # server that waits for a request line makes each wait out a 10 s handshake timeout.
        if self.silent and data:
            self.silent = False
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

    def _flush_some(self, do_close: bool = True) -> bool:
        """Waitress' own (3.0.2, pinned), but for what ``_send_some`` sends."""
        outbufs = cast(list[Any], self.outbufs)
        sent = 0
        while True:
            outbuf = outbufs[0]
            left = outbuf.__len__()  # as waitress: len() may overflow on 32 bits
            while left > 0:
                count = self._send_some(outbuf, do_close)
                if not count:  # the socket is full (or gone): the rest goes later
                    break
                outbuf.skip(count, True)
                left -= count
                sent += count
                self.total_outbufs_len -= count
            else:
                if len(outbufs) > 1:  # this one is done; on to the next
                    done = outbufs.pop(0)
                    try:
                        done.close()
                    except Exception:
                        log.exception("unexpected error when closing an output buffer")
                    continue
            break
        if sent:
            self.last_activity = time.time()
        return bool(sent)

    def _send_some(self, outbuf: Any, do_close: bool) -> int:
        """Bytes sent from the buffer: a file's with sendfile, anything else's as waitress.
        A file buffer's ``by_kernel``: unset until sendfile is tried, then whether it
        sends the file (False: the kernel refused it)."""
        if type(outbuf) is ReadOnlyFileBasedBuffer and getattr(outbuf, "by_kernel", True):
            try:
                fd = outbuf.file.fileno()
            except (AttributeError, OSError, ValueError):  # not a file of the system's
                pass
            else:
                sent = self._sendfile(outbuf, fd, do_close)
                if sent is not None:
                    return sent
        return self.send(outbuf.get(self.sendbuf_len), do_close=do_close)

    def _sendfile(self, outbuf: Any, fd: int, do_close: bool) -> int | None:
        """Bytes sent, or None if the kernel refused the file before any of it went."""
        assert self.socket is not None, "a channel that sends is connected"
        try:
            sent = os.sendfile(self.socket.fileno(), fd, outbuf.file.tell(), outbuf.remain)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno in _REFUSED and not hasattr(outbuf, "by_kernel"):
                outbuf.by_kernel = False
                return None
            if e.errno not in _DISCONNECTED:
                raise
            sent = 0
        outbuf.by_kernel = True
        if not sent and do_close:  # gone, or the file shorter than it said: nothing more
            self.handle_close()
        return sent


class FairQueue:
    """Waitress' task queue (a deque's ``append``, ``popleft`` and length, under the
    dispatcher's lock), served one address at a time in turn: a task waits behind at most one
    task of each other address that has some waiting. A task is a connection with a request
    read, queued with its request's address, and a connection is queued once at a time."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[_Channel]] = {}  # by address, in arrival order
        self._turns: deque[str] = deque()  # addresses with tasks waiting, next first
        self._length = 0

    def append(self, task: _Channel, client: str) -> None:
        waiting = self._waiting.get(client)
        if waiting is None:
            waiting = self._waiting[client] = deque()
            self._turns.append(client)
        waiting.append(task)
        self._length += 1

    def popleft(self) -> _Channel:
        client = self._turns.popleft()  # IndexError when empty, as a deque's
        waiting = self._waiting[client]
        task = waiting.popleft()
        if waiting:
            self._turns.append(client)
        else:
            del self._waiting[client]
        self._length -= 1
        return task

    def __len__(self) -> int:
        return self._length


class _Dispatcher(ThreadedTaskDispatcher):
    """Waitress' thread pool, with the queue above, counting the requests that wait for a
    thread instead of logging each."""

    # The stubs call its tasks Task; waitress' servers queue their channels.
    queue: FairQueue  # type: ignore[assignment]

    def __init__(self, trusted_proxies: int) -> None:
        super().__init__()
        self.trusted_proxies = trusted_proxies
        self.queue = FairQueue()
        self.waited = 0  # requests queued with no thread idle, since the last maintenance
        self.deepest = 0  # the most waiting at once since then

    def add_task(self, task: Task) -> None:
        channel = cast(_Channel, task)
        client = self._client_of(channel)
        with self.lock:
            self.queue.append(channel, client)
            self.queue_cv.notify()
            waiting = len(self.queue) - (len(self.threads) - self.stop_count - self.active_count)
            if waiting > 0:
                self.waited += 1
                self.deepest = max(self.deepest, waiting)

    def _client_of(self, channel: _Channel) -> str:
        """The address whose turn the channel's next request takes: behind trusted proxies,
        the client they name, as ProxyFix finds it (the N-th entry from the right), else the
        proxy's own when they name none. The channel's caller holds its requests' lock."""
        if not self.trusted_proxies:
            return channel.client
        forwarded = parse_list_header(channel.requests[0].headers.get("X_FORWARDED_FOR", ""))
        if len(forwarded) < self.trusted_proxies:
            return channel.client
        return client_key(forwarded[-self.trusted_proxies])

    def waits(self) -> tuple[int, int]:
        """The requests that waited for a thread and the most at once, since the last call."""
        with self.lock:
            counts = self.waited, self.deepest
            self.waited = self.deepest = 0
            return counts


class _Server(TcpWSGIServer):
    limits: ConnectionLimits
    task_dispatcher: _Dispatcher
    made_room: Counter[str]  # connections closed at the limit since the last maintenance
    room_looked = 0.0  # time.monotonic() of the last look for room to make
    pending: select.poll  # the listening socket, to ask whether a connection waits

    def channels(self) -> list[_Channel]:
        # The stubs call active_channels one channel; it is a dict of them by descriptor.
        return list(cast(dict[int, _Channel], self.active_channels).values())

    def maintenance(self, now: int) -> None:
        """Also closes connections whose request has taken too long to arrive, and writes
        the refusals counted (``logs.Tally``) that are due."""
        super().maintenance(now)
        cutoff = time.monotonic() - self.limits.header_timeout
        silent: Counter[str] = Counter()
        for channel in self.channels():
            if channel.began is None or channel.began >= cutoff or channel.will_close:
                continue
            channel.will_close = True
            if channel.silent:  # one line for all: they come by the thousand
                silent[channel.client] += 1
            else:
                log.warning("closed a connection from %s: its request came too slowly",
                            channel.addr[0])  # fmt: skip
        if silent:
            log.warning("closed %d connections that sent nothing within %g s (%s)",
                        silent.total(), self.limits.header_timeout, _most(silent))  # fmt: skip
        if self.made_room:
            log.warning("at the connection limit: closed %d idle connections to let others in "
                        "(%s)", self.made_room.total(), _most(self.made_room))  # fmt: skip
            self.made_room = Counter()
        flush_tallies()
        waited, deepest = self.task_dispatcher.waits()
        if waited:
            log.warning("%d requests waited for a thread, up to %d at once", waited, deepest)

    def readable(self) -> bool:
        """At the connection limit, makes room for the connections waiting to be accepted,
        which waitress would leave waiting until one closes by itself."""
        accepting = super().readable()
        if self.in_connection_overflow and self._room_wanted():
            self._make_room()
        return accepting

    def _room_wanted(self) -> bool:
        """Whether a connection waits to be accepted, asked at most every ``ROOM_INTERVAL``:
        the loop turns for every socket event, and a look sorts every connection. With none
        waiting, the idle connections stay."""
        now = time.monotonic()
        if now - self.room_looked < ROOM_INTERVAL:
            return False
        self.room_looked = now
        return bool(self.pending.poll(0))

    def _make_room(self) -> None:
        """Closes the connections that have waited longest for a request, silent ones first
        and those with a request half-received last: none is being answered, has a request
        queued or was accepted within ``ACCEPT_GRACE`` (not read yet, not silent). Closing
        takes the loop's next turn, so a batch goes at once. A client whose idle keep-alive
        connection goes connects again, as it would after the idle timeout."""
        settled = time.monotonic() - ACCEPT_GRACE
        idle = [c for c in self.channels() if not c.requests and not c.total_outbufs_len
                and not c.will_close and c.accepted < settled]  # fmt: skip
        idle.sort(key=lambda c: (c.request is not None, not c.silent, c.last_activity))
        for channel in idle[: max(1, self.adj.connection_limit // 100)]:
            channel.will_close = True
            self.made_room[channel.client] += 1


def _most(counts: Counter[str]) -> str:
    """The 5 addresses with the most, for a log line."""
    return ", ".join(f"{client}: {n}" for client, n in counts.most_common(5))


def create_server(
    app: Flask, host: str, port: int, limits: ConnectionLimits, trusted_proxies: int = 0
) -> _Server:
    # Each connection is a file descriptor: make room for the limit, within the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.connections + limits.threads + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    dispatcher = _Dispatcher(trusted_proxies)
    dispatcher.set_thread_count(limits.threads)
    server = _Server(
        app,
        dispatcher=dispatcher,
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
        # select() fails on descriptors past 1,023, which a thousand connections reach.
        asyncore_use_poll=True,
    )
    server.limits = limits
    server.made_room = Counter()
    server.pending = select.poll()
    assert server.socket is not None, "a server listens once made"
    server.pending.register(server.socket, select.POLLIN)
    server.channel_class = _Channel
    return server
