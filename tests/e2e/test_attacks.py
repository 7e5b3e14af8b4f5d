"""Attacks on local mode as a stranger would make them, while a well-behaved client pulls:
slow and silent clients, clients that hang up or wait for slow builds, one address holding
many connections, many new builds, huge images and requests. The well-behaved client is
answered throughout. Requests waiting for builds are bounded on the registry function too.

The attackers connect from other loopback addresses (127.0.0.2 and up) than the client
(127.0.0.1), as they would from other hosts: limits are per address.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import select
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixery.http.auth import hash_password
from nixery.sources.history import CHECKS_AT_ONCE
from tests.helpers.emulators import Emulators, GcpRegistry
from tests.helpers.protocol import basic
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


def ask(reg: Registry, source: str, path: str) -> socket.socket:
    """Sends a request and leaves its answer to be read (the server closes after it)."""
    sock = connect(reg, source)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {OCI}\r\n"
                 "Connection: close\r\n\r\n".encode())  # fmt: skip
    return sock


def answers(socks: list[socket.socket], count: int, within: float) -> dict[socket.socket, bytes]:
    """The whole answers of the first ``count`` requests answered, waiting at most ``within``
    seconds (a generous deadline: the others are meant to go on waiting)."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    read = {sock: b"" for sock in socks}
    done: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + within
    while len(done) < count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            read[sock] += chunk
            if not chunk:
                done[sock] = read[sock]
                selector.unregister(sock)
    selector.close()
    return done


def status_of(answer: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


def slow_images(count: int) -> list[str]:
    """Distinct new images that each wait for the demo set's `slow` (600 s) to build."""
    names = [f"slow/{p}" for p in DEMO_PACKAGES] + [
        f"slow/{a}/{b}" for a, b in itertools.combinations(DEMO_PACKAGES, 2)
    ]
    return names[:count]


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


def test_one_address_may_hold_only_so_many_connections(make_registry) -> None:
    # The header timeout (10 s) outlasts the checks: silent connections are closed after it.
    reg = make_registry(NIXERY_CLIENT_CONNECTIONS="8")
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


def test_requests_waiting_for_builds_are_bounded_and_cached_pulls_answered(make_registry) -> None:
    """50 requests for slow new images from 5 addresses against 16 request threads: half the
    threads (8) may wait, 2 from one address; the others are a 503 at once, naming the bound,
    and a cached pull is answered while the 8 wait. Without the bounds every thread waits for
    NIXERY_BUILD_WAIT (600 s here) and the cached pull gets no answer."""
    reg = make_registry(NIX_TIMEOUT="600", NIXERY_SERVER_THREADS="16", NIXERY_BUILD_WAIT="600",
                        NIXERY_MAX_QUEUED_BUILDS="100")  # fmt: skip
    assert get(reg, "/v2/hello/manifests/latest")[0] == 200
    sources = [f"127.0.0.{i}" for i in range(2, 7)]
    socks = [ask(reg, sources[i % 5], f"/v2/{name}/manifests/latest")
             for i, name in enumerate(slow_images(50))]  # fmt: skip
    answered = answers(socks, len(socks) - 8, within=120)
    assert len(answered) == len(socks) - 8
    waiting = [sock for sock in socks if sock not in answered]
    by_address = [sock.getsockname()[0] for sock in waiting]
    assert max(by_address.count(source) for source in sources) == 2
    messages = set()
    for answer in answered.values():
        status, headers, body = status_of(answer)
        assert status == 503 and int(headers["Retry-After"]) > 0, answer
        error = body["errors"][0]
        assert error["code"] == "UNAVAILABLE" and "the build goes on" in error["message"]
        messages.add(error["detail"]["limit"])
    assert messages == {"NIXERY_CLIENT_WAITERS", "NIXERY_MAX_WAITERS"}
    assert get(reg, "/v2/hello/manifests/latest", timeout=60)[0] == 200
    assert not answers(waiting, 1, within=0.5), "the waiting requests still wait"
    for sock in socks:
        sock.close()


def test_requests_waiting_on_the_function_are_bounded(emulators: Emulators, tmp_path: Path) -> None:
    """The registry function (functions-framework, 8 threads) keeps half its threads from
    requests waiting for builds, so a cached pull is answered while 8 addresses wait for slow
    new images; without the bound all 8 threads wait for NIXERY_BUILD_WAIT."""
    reg = GcpRegistry(tmp_path, emulators, THREADS="8", NIX_TIMEOUT="600",
                      NIXERY_BUILD_WAIT="120").start()  # fmt: skip
    try:
        assert get(reg, "/v2/hello/manifests/latest", timeout=300)[0] == 200
        socks = [ask(reg, f"127.0.0.{i}", f"/v2/{name}/manifests/latest")
                 for i, name in enumerate(slow_images(8), start=2)]  # fmt: skip
        answered = answers(socks, 4, within=60)
        assert len(answered) == 4
        for answer in answered.values():
            status, _, body = status_of(answer)
            assert status == 503 and body["errors"][0]["detail"]["limit"] == "NIXERY_MAX_WAITERS"
        assert get(reg, "/v2/hello/manifests/latest", timeout=60)[0] == 200
        for sock in socks:
            sock.close()
    finally:
        # Not SIGTERM: gunicorn would let the waits and the slow builds finish first.
        for process in (reg.registry, reg.builder):
            if process:
                process.kill(signal.SIGKILL)


def test_commit_tags_checked_at_once_are_bounded(make_registry) -> None:
    """Made-up commit tags each hold a thread while their checks take turns on the package
    repository (a git remote that never answers here: the first check's fetch hangs): beyond
    CHECKS_AT_ONCE, one more is a 503 at once naming the cause, not one more thread held."""
    remote = socket.create_server(("127.0.0.1", 0))
    remote.settimeout(60)
    reg = make_registry(NIXERY_PKGS_REPO=f"http://127.0.0.1:{remote.getsockname()[1]}/x.git")
    held: list[socket.socket] = []
    try:
        socks = [ask(reg, "127.0.0.1", f"/v2/hello/manifests/{n:040x}")
                 for n in range(CHECKS_AT_ONCE + 3)]  # fmt: skip
        held.append(remote.accept()[0])  # the first check's fetch, which hangs
        refused = answers(socks, 3, within=60)
        assert len(refused) == 3
        for answer in refused.values():
            status, headers, body = status_of(answer)
            assert status == 503 and "Retry-After" in headers
            assert "commit tags are being checked" in body["errors"][0]["message"]
    finally:
        for sock in held:
            sock.close()
        remote.close()


def test_silent_connections_are_closed_from_their_accept(make_registry) -> None:
    """A connection that never sends a byte goes after NIXERY_HEADER_TIMEOUT from its accept,
    not after the idle timeout (an hour here)."""
    reg = make_registry(NIXERY_HEADER_TIMEOUT="2", NIXERY_IDLE_TIMEOUT="3600")
    silent = [connect(reg, f"127.0.0.{2 + i % 4}") for i in range(20)]
    assert all(closed_by_server(sock, within=60) for sock in silent)
    assert get(reg, "/v2/")[0] == 200
    assert "127.0.0.2: 5" in reg.log(), "the line names the addresses with the most"


def test_a_thousand_silent_connections_keep_nobody_out(make_registry) -> None:
    """1,000 silent connections from 42 addresses fill the server's connections; a new client
    still gets in, as the server closes the silent ones that have waited longest to make room
    (the header timeout is ten minutes here, the idle timeout an hour: they are not what
    lets it in)."""
    reg = make_registry(NIXERY_HEADER_TIMEOUT="600", NIXERY_IDLE_TIMEOUT="3600")
    silent = [connect(reg, f"127.0.0.{2 + i % 42}") for i in range(1000)]
    try:
        assert get(reg, "/v2/", timeout=60)[0] == 200
        assert get(reg, "/v2/", source="127.0.0.99", timeout=60)[0] == 200
        assert any(closed_by_server(sock, within=0.01) for sock in silent[:100])
    finally:
        for sock in silent:
            sock.close()


def test_room_made_at_the_limit_never_turns_away_the_new_client(make_registry) -> None:
    """The server full of idle keep-alive connections that have each been answered: 20 new
    clients, one after another, are each let in and answered. The room made for one must not
    go to the connection just accepted, not read yet (they were all reset before); the idle
    ones go (the header timeout is ten minutes, the idle timeout an hour: they are not what
    lets them in)."""
    reg = make_registry(NIXERY_MAX_CONNECTIONS="10", NIXERY_HEADER_TIMEOUT="600",
                        NIXERY_IDLE_TIMEOUT="3600")  # fmt: skip
    idle = [http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60,
                                       source_address=(f"127.0.0.{2 + n}", 0))
            for n in range(10)]  # fmt: skip
    for conn in idle:
        conn.request("GET", "/v2/")
        conn.getresponse().read()
    try:
        statuses = [get(reg, "/v2/", source="127.0.0.99", timeout=60)[0] for _ in range(20)]
        assert statuses == [200] * 20
    finally:
        for conn in idle:
            conn.close()


def test_at_the_limit_no_connection_is_closed_while_none_waits(make_registry) -> None:
    """The server at its connection limit (10: 8 connections, the listening socket and
    waitress' wake-up pipe) with
    idle keep-alive connections and nobody waiting to connect: room is made only for a
    connection that waits, so none is closed (the idle timeout is an hour)."""
    reg = make_registry(NIXERY_MAX_CONNECTIONS="10", NIXERY_IDLE_TIMEOUT="3600")
    idle = [http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60,
                                       source_address=(f"127.0.0.{2 + n}", 0))
            for n in range(8)]  # fmt: skip
    try:
        for n, conn in enumerate(idle):
            if n == len(idle) - 1:  # the others past ACCEPT_GRACE
                time.sleep(1.5)
            conn.request("GET", "/v2/")
            conn.getresponse().read()
        time.sleep(1.5)  # the last one past ACCEPT_GRACE too: all may be closed from now on
        idle[0].request("GET", "/v2/")  # the server's loop turns for it
        assert idle[0].getresponse().status == 200
        assert not select.select([c.sock for c in idle[1:]], [], [], 0)[0], "closed some"
    finally:
        for conn in idle:
            conn.close()


def test_a_flood_from_one_address_does_not_queue_ahead_of_others(make_registry) -> None:
    """Requests wait for a thread in turns by address: 24 wrong passwords from one address,
    each holding one of the 4 threads while its hash is checked, are queued before a logged-in
    client's request, which is answered before most of them rather than after all."""
    hashed = hash_password("right")
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hashed}",
                        NIXERY_SERVER_THREADS="4", NIXERY_AUTH_CHECKS="4",
                        NIXERY_AUTH_FAILURES="1000/60")  # fmt: skip
    alice = {"Accept": OCI, "Authorization": basic("alice", "right")}
    assert reg.get("/v2/hello/manifests/latest", headers=alice).status_code == 200
    flood = [connect(reg, "127.0.0.2") for _ in range(24)]
    for n, sock in enumerate(flood):
        sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {basic(f'u{n}', 'x')}"
                     "\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
    time.sleep(0.5)  # for the server to read them: the order is what is tested
    assert reg.get("/v2/hello/manifests/latest", headers=alice).status_code == 200
    answered, _, _ = select.select(flood, [], [], 0)
    assert len(answered) < len(flood) // 2, f"{len(answered)} of the flood answered first"
    assert all(status_of(a)[0] == 401 for a in answers(flood, len(flood), 120).values())


def test_behind_a_proxy_a_request_takes_its_forwarded_clients_turn(make_registry) -> None:
    """A fake proxy (127.0.0.1 sending X-Forwarded-For, NIXERY_TRUSTED_PROXIES=1): a flood of
    24 wrong passwords from one forwarded client is queued before another forwarded client's
    request, which takes its own turn and is answered before most of the flood (all were the
    proxy's turn before)."""
    hashed = hash_password("right")
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hashed}",
                        NIXERY_SERVER_THREADS="4", NIXERY_AUTH_CHECKS="4",
                        NIXERY_AUTH_FAILURES="1000/60", NIXERY_TRUSTED_PROXIES="1")  # fmt: skip
    alice = {"Accept": OCI, "Authorization": basic("alice", "right"),
             "X-Forwarded-For": "10.0.0.1"}  # fmt: skip
    assert reg.get("/v2/hello/manifests/latest", headers=alice).status_code == 200
    flood = [connect(reg, "127.0.0.1") for _ in range(24)]
    for n, sock in enumerate(flood):
        sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {basic(f'u{n}', 'x')}"
                     "\r\nX-Forwarded-For: 203.0.113.9, 10.0.0.2\r\n"
                     "Connection: close\r\n\r\n".encode())  # fmt: skip
    time.sleep(0.5)  # for the server to read them: the order is what is tested
    assert reg.get("/v2/hello/manifests/latest", headers=alice).status_code == 200
    answered, _, _ = select.select(flood, [], [], 0)
    assert len(answered) < len(flood) // 2, f"{len(answered)} of the flood answered first"
    assert all(status_of(a)[0] == 401 for a in answers(flood, len(flood), 120).values())


def test_behind_a_proxy_a_429_does_not_pause_the_connection(make_registry) -> None:
    """A fake proxy (127.0.0.1 sending X-Forwarded-For, NIXERY_TRUSTED_PROXIES=1): after a 429
    its connection is read at once, as its next request may be anybody's: that request (a
    refusal, no password checked) is answered before one sent after it on another connection
    (a password checked, ~140 ms); paused, it would be read a second later."""
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hash_password('right')}",
                        NIXERY_AUTH_FAILURES="1/3600", NIXERY_TRUSTED_PROXIES="1")  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    forwarded = {"X-Forwarded-For": "10.0.0.2"}
    statuses = []
    for n in range(2):
        conn.request("GET", "/v2/", headers={"Authorization": basic(f"u{n}", "x"), **forwarded})
        statuses.append(conn.getresponse())
        statuses[-1].read()
    assert [r.status for r in statuses] == [401, 429]
    conn.request("GET", "/v2/", headers={"Authorization": basic("u2", "x"), **forwarded})
    other = reg.get("/v2/", headers={"Authorization": basic("alice", "wrong"),
                                     "X-Forwarded-For": "10.0.0.3"})  # fmt: skip
    assert other.status_code == 401
    assert conn.sock is not None
    assert select.select([conn.sock], [], [], 0)[0], "paused after its 429"
    assert conn.getresponse().status == 429
    conn.close()


def test_a_new_build_limits_429_does_not_pause_the_connection(make_registry) -> None:
    """Only a login's 429 pauses a connection: after the new-build limit's, a cached pull on
    the same connection (dockerd's pooled one, say) is read at once, answered before three
    cached pulls sent after it on other connections are; paused, a second later."""
    reg = make_registry(NIXERY_CLIENT_BUILDS="1/3600")
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=600,
                                      source_address=("127.0.0.2", 0))  # fmt: skip
    statuses = []
    for name in ("hello", "jq"):
        conn.request("GET", f"/v2/{name}/manifests/latest", headers={"Accept": OCI})
        statuses.append(conn.getresponse())
        statuses[-1].read()
    assert [r.status for r in statuses] == [200, 429]
    conn.request("GET", "/v2/hello/manifests/latest", headers={"Accept": OCI})
    for _ in range(3):
        assert get(reg, "/v2/hello/manifests/latest")[0] == 200
    assert conn.sock is not None
    assert select.select([conn.sock], [], [], 0)[0], "paused after the new-build limit's 429"
    assert conn.getresponse().status == 200
    conn.close()


def test_the_last_refusals_of_a_flood_are_logged(make_registry) -> None:
    """Refusals are counted and logged one line per address every 10 s, by the next refusal:
    the last counts of a flood that stops are written by the server's maintenance instead."""
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hash_password('right')}",
                        NIXERY_AUTH_FAILURES="1/3600")  # fmt: skip
    for n in range(2):
        get_headers = {"Authorization": basic(f"u{n}", "x")}
        assert reg.get("/v2/", headers=get_headers).status_code == [401, 429][n]
    line = "address 127.0.0.1: refused 1 logins unchecked"
    deadline = time.monotonic() + 60  # a generous bound: the line comes after about 10 s
    while line not in reg.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert line in reg.log()


def test_a_connection_is_not_read_for_a_while_after_a_429(make_registry) -> None:
    """A client that asks again at once after a 429, on the same connection, has its request
    read THROTTLED_PAUSE (1 s) later, without a thread: meanwhile another client is answered
    (a cheap request, well within the pause), and then the paused request is."""
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hash_password('right')}",
                        NIXERY_AUTH_FAILURES="1/3600")  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60,
                                      source_address=("127.0.0.2", 0))  # fmt: skip
    statuses = []
    for n in range(2):
        conn.request("GET", "/v2/", headers={"Authorization": basic(f"u{n}", "x")})
        statuses.append(conn.getresponse())
        statuses[-1].read()
    assert [r.status for r in statuses] == [401, 429]
    conn.request("GET", "/v2/", headers={"Authorization": basic("u2", "x")})
    assert get(reg, "/v2/")[0] == 401  # another client, answered meanwhile
    assert conn.sock is not None
    assert not select.select([conn.sock], [], [], 0)[0], "read at once after its 429"
    assert conn.getresponse().status == 429
    conn.close()
