"""Attacks: a well-behaved client's cached pulls while each of three attacks runs in turn.

    .venv/bin/python -m bench.attacks [--minutes 10] [--waiters 80] [--flood 200]
                                      [--silent 1000] [--smoke]

One `nixery serve` (demo set, Basic auth configured, the limits as shipped; NIX_TIMEOUT raised
so that the demo set's `slow` package, which sleeps 600 s, builds rather than times out). A
well-behaved client (127.0.0.1, the right password) pulls a cached manifest once a second on a
new connection, throughout. After a short quiet baseline, each attack runs for a third of
--minutes, in turn, from other loopback addresses:

- waiters: --waiters requests (20 per address) for slow new images, a name for every four of
  them (joining a build is free: no new-build limit counts them), each asked again a second
  after its answer;
- wrong passwords: --flood keep-alive connections from 8 addresses, each sending a request
  with a wrong Basic password as soon as the last is answered (`bench.login_flood`'s);
- silent: --silent connections from 42 addresses that never send a byte, each opened again
  as soon as the server closes it.

Prints, per phase, the client's pulls, errors (anything but a 200 within 30 s), p50 and p99,
and the server's RSS at the phase's start and end.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import resource
import selectors
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib.harness import command_parser, parse_args, percentile_ms, rss_mb
from bench.login_flood import attacker
from nixery.http.auth import hash_password
from tests.helpers.protocol import basic
from tests.helpers.registries import OCI, Registry

PACKAGES = ["hello", "zlib", "libffi", "expat", "ncurses", "readline", "pcre2", "oniguruma",
            "openssl", "curl", "perl", "git", "htop", "vim", "jq", "ripgrep"]  # fmt: skip
USER, PASSWORD = "bench", "the-right-password"
CACHED = "/v2/hello/manifests/latest"
CLIENT_TIMEOUT = 30.0
# Seconds a blocked attacker's socket waits between looks at whether its phase is over.
POLL = 1.0


@dataclass
class Phase:
    name: str
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)


class WellBehaved:
    """Pulls the cached manifest once a second, each time on a new connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.phase = Phase("")
        self.stop = threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            due += 1.0
            phase, started = self.phase, time.monotonic()
            error = None
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            headers = {"Accept": OCI, "Authorization": basic(USER, PASSWORD)}
            try:
                conn.request("GET", CACHED, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    error = f"{response.status} {response.reason}"
            except (OSError, http.client.HTTPException) as e:
                error = f"{type(e).__name__}: {e}"
            finally:
                conn.close()
            phase.seconds.append(time.monotonic() - started)
            if error:
                phase.errors.append(error)
            due = max(due, time.monotonic())


def ask(port: int, source: str, path: str, authorization: str, stop: threading.Event) -> None:
    """One request on its own connection, read until the server closes it or ``stop``."""
    request = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {OCI}\r\nAuthorization: "
               f"{authorization}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), POLL, (source, 0)) as sock,
    ):
        sock.sendall(request)
        while not stop.is_set():
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                continue


def waiters(port: int, count: int, stop: threading.Event) -> list[threading.Thread]:
    names = [f"slow/{a}/{b}" for a, b in itertools.combinations(PACKAGES, 2)]
    authorization = basic(USER, PASSWORD)  # a user of the registry, or a public one's stranger

    def slot(i: int) -> None:
        source, path = f"127.0.0.{2 + i // 20}", f"/v2/{names[i // 4]}/manifests/latest"
        while not stop.is_set():
            ask(port, source, path, authorization, stop)
            stop.wait(1.0)

    return [threading.Thread(target=slot, args=(i,)) for i in range(count)]


def wrong_passwords(port: int, count: int, stop: threading.Event) -> list[threading.Thread]:
    answers = Counter[str]()  # not reported: the client's figures are
    sources = [f"127.0.0.{30 + i % 8}" for i in range(count)]
    return [threading.Thread(target=attacker, args=(port, s, answers, stop)) for s in sources]


def silent(port: int, count: int, stop: threading.Event) -> list[threading.Thread]:
    def run() -> None:
        selector = selectors.DefaultSelector()
        sources = itertools.cycle([f"127.0.1.{i}" for i in range(1, 43)])

        def open_one() -> None:
            with contextlib.suppress(OSError):
                sock = socket.create_connection(("127.0.0.1", port), POLL, (next(sources), 0))
                selector.register(sock, selectors.EVENT_READ)

        for _ in range(count):
            open_one()
        while not stop.is_set():
            closed = [key.fileobj for key, _ in selector.select(timeout=0.5)]
            for sock in closed:
                assert isinstance(sock, socket.socket)
                selector.unregister(sock)
                sock.close()
            for _ in range(count - len(selector.get_map())):
                open_one()
        for key in list(selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()
        selector.close()

    return [threading.Thread(target=run)]


Attack = Callable[[int, int, threading.Event], list[threading.Thread]]


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="all three attacks")
    parser.add_argument("--waiters", type=int, default=80)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--silent", type=int, default=1000)
    args = parse_args(parser, minutes=0.25, waiters=8, flood=8, silent=50)
    # The silent connections are this process's descriptors too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.silent + 1024)), hard))
    attacks: list[tuple[str, Attack, int]] = [
        (f"waiters ({args.waiters})", waiters, args.waiters),
        (f"wrong passwords ({args.flood})", wrong_passwords, args.flood),
        (f"silent ({args.silent})", silent, args.silent),
    ]
    each = args.minutes * 60 / len(attacks)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as tmp:
        reg = Registry(Path(tmp) / "storage", NIX_TIMEOUT="900", NIXERY_AUTH="basic",
                       NIXERY_AUTH_USERS=f"{USER}:{hash_password(PASSWORD)}").start()  # fmt: skip
        try:
            assert reg.proc is not None
            pid = reg.proc.pid
            warm = reg.get(CACHED, headers={"Accept": OCI, "Authorization": basic(USER, PASSWORD)})
            assert warm.status_code == 200, warm.text
            client = WellBehaved(reg.port)
            puller = threading.Thread(target=client.run)
            puller.start()
            try:
                for name, attack, count in [("none", None, 0), *attacks]:
                    phase = client.phase = Phase(name)
                    phases.append(phase)
                    phase.rss.append(rss_mb(pid))
                    stop = threading.Event()
                    threads = attack(reg.port, count, stop) if attack else []
                    for thread in threads:
                        thread.start()
                    time.sleep(min(each, 30.0) if attack is None else each)
                    stop.set()
                    phase.rss.append(rss_mb(pid))
                    for thread in threads:
                        thread.join()
            finally:
                client.stop.set()
                puller.join()
        finally:
            reg.stop()
    print(f"{args.minutes:g} minutes of attacks ({each:.0f} s each); a cached pull a second")
    print(f"{'attack':<24} {'pulls':>6} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'RSS MB start/end':>17}")  # fmt: skip
    for phase in phases:
        if not phase.seconds:
            continue
        p50, p99 = percentile_ms(phase.seconds, 0.5), percentile_ms(phase.seconds, 0.99)
        print(f"{phase.name:<24} {len(phase.seconds):6} {len(phase.errors):7} {p50:8.1f} "
              f"{p99:8.1f} {phase.rss[0]:8.0f}/{phase.rss[-1]:.0f}")  # fmt: skip
    for phase in phases:
        for error in sorted(set(phase.errors))[:3]:
            print(f"  {phase.name} error: {error}")


if __name__ == "__main__":
    main()
