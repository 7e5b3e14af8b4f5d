"""Attacks on local mode as a stranger would make them, while a well-behaved client pulls:
slow clients, clients that hang up, one address holding many connections, many new builds,
huge images and requests. The well-behaved client is answered throughout.

The attackers connect from other loopback addresses (127.0.0.2 and up) than the client
(127.0.0.1), as they would from other hosts: limits are per address.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers.registries import OCI, Registry

pytestmark = pytest.mark.e2e

DEMO_PACKAGES = ["hello", "zlib", "libffi", "expat", "ncurses", "readline", "pcre2",
                 "oniguruma", "openssl", "curl", "perl", "git", "htop", "vim", "jq"]  # fmt: skip


def connect(reg: Registry, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", reg.port), timeout=10, source_address=(source, 0))
    return sock


def get(reg: Registry, path: str, source: str = "127.0.0.1", timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=timeout,
                                      source_address=(source, 0))  # fmt: skip
    try:
        conn.request("GET", path, headers={"Accept": OCI})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b"" or True  # EOF, or an error answer before it
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


class WellBehaved:
    """Pulls a cached manifest once a second on its own thread; records each answer."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WellBehaved:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            started = time.monotonic()
            try:
                status = get(self.reg, "/v2/hello/manifests/latest", timeout=10)[0]
            except OSError:
                status = 0
            self.answers.append((status, time.monotonic() - started))

    def assert_served_throughout(self) -> None:
        assert len(self.answers) >= 3
        assert all(status == 200 for status, _ in self.answers), self.answers
        assert max(seconds for _, seconds in self.answers) < 2, self.answers


@pytest.fixture
def reg(make_registry) -> Iterator[Registry]:
    registry = make_registry(
        NIX_TIMEOUT="600", NIXERY_HEADER_TIMEOUT="3", NIXERY_CLIENT_CONNECTIONS="8",
        NIXERY_SERVER_THREADS="16",
    )  # fmt: skip
    assert get(registry, "/v2/hello/manifests/latest")[0] == 200
    yield registry


def test_slow_clients_are_cut_off_and_lock_nobody_out(make_registry) -> None:
    """150 connections that each send a header line every 2 s: each is closed once its
    request has taken 3 s, and the server keeps answering others meanwhile."""
    reg = make_registry(NIXERY_HEADER_TIMEOUT="3", NIXERY_CLIENT_CONNECTIONS="1000")
    assert get(reg, "/v2/hello/manifests/latest")[0] == 200
    sources = itertools.cycle([f"127.0.0.{i}" for i in range(2, 12)])
    slow = [connect(reg, next(sources)) for _ in range(150)]
    for sock in slow:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
    with WellBehaved(reg) as client:
        for _ in range(3):
            time.sleep(2)
            for sock in slow:
                with contextlib.suppress(OSError):  # closed already
                    sock.sendall(b"X-Slow: 1\r\n")
        client.assert_served_throughout()
    assert all(closed_by_server(sock, within=5) for sock in slow)


def test_one_address_may_hold_only_so_many_connections(reg) -> None:
    held = [connect(reg, "127.0.0.2") for _ in range(20)]
    time.sleep(1)
    refused = [sock for sock in held if closed_by_server(sock, within=0.5)]
    assert len(refused) == 20 - 8
    assert get(reg, "/v2/hello/manifests/latest", source="127.0.0.3")[0] == 200


def test_clients_that_hang_up_do_not_hold_threads(reg) -> None:
    """Requests for slow new images, each dropped at once: more than the server's 16
    threads, yet a cached pull is answered at once, and every thread is free again."""
    names = [f"slow/{p}" for p in DEMO_PACKAGES] + [
        f"slow/{a}/{b}" for a, b in itertools.combinations(DEMO_PACKAGES[:6], 2)
    ]
    sources = itertools.cycle([f"127.0.0.{i}" for i in range(2, 12)])
    with WellBehaved(reg) as client:
        for name in names:
            sock = connect(reg, next(sources))
            sock.sendall(f"GET /v2/{name}/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.close()
        time.sleep(4)
        client.assert_served_throughout()
    assert len(names) > 16
    # Each waiting request saw its client go within a second or two, however long its build.
    started = time.monotonic()
    answers = [get(reg, "/v2/hello/manifests/latest") for _ in range(16)]
    assert all(status == 200 for status, _, _ in answers)
    assert time.monotonic() - started < 5


def test_new_builds_per_client_are_limited_and_cached_pulls_are_not(make_registry) -> None:
    reg = make_registry(NIXERY_CLIENT_BUILDS="2/3600")
    assert get(reg, "/v2/hello/manifests/latest")[0] == 200
    assert get(reg, "/v2/jq/manifests/latest")[0] == 200
    status, headers, body = get(reg, "/v2/htop/manifests/latest")
    assert status == 429, body
    assert 3500 < int(headers["Retry-After"]) <= 3600
    assert b'"TOOMANYREQUESTS"' in body and b"images built before can still be pulled" in body
    assert get(reg, "/v2/hello/manifests/latest")[0] == 200, "cached pulls stay free"
    assert get(reg, "/v2/htop/manifests/latest", source="127.0.0.2")[0] == 200


def test_images_and_requests_over_the_limits_get_clear_errors(make_registry) -> None:
    reg = make_registry(NIXERY_MAX_IMAGE_SIZE="1M", NIXERY_MAX_PACKAGES="4")
    status, _, body = get(reg, "/v2/hello/manifests/latest")  # glibc alone is 8 MB
    assert status == 403 and b'"DENIED"' in body and b"over this registry's limit" in body
    assert reg.builds_started() == 1
    status, _, body = get(reg, "/v2/hello/jq/htop/manifests/latest")  # with cacert, iana-etc
    assert status == 400 and b"at most 4 packages" in body
    status, _, body = get(reg, "/v2/" + "a/" * 1500 + "manifests/latest")
    assert status == 414 and b"NAME_INVALID" in body
    with socket.create_connection(("127.0.0.1", reg.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 40_000 + b"\r\n\r\n")
        assert sock.recv(64).split(b" ")[1].startswith(b"4")
    assert get(reg, "/v2/iana-etc/manifests/latest")[0] == 200, "a small image is built"
