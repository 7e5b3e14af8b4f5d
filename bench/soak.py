"""Soak: minutes of mixed cached pulls and new builds under a slow-client attack, local mode.

    .venv/bin/python -m bench.soak [--minutes 10] [--pullers 8] [--build-every 5] [--smoke]

One `nixery serve` (demo set), its limits as shipped. Well-behaved clients run throughout:
--pullers threads pulling cached images (a manifest by tag, then its config blob) as fast as
they are answered, and one thread asking for a new image (a new combination of demo
packages) every --build-every seconds. Meanwhile the attack: 100 connections from ten other
loopback addresses that each send a header line every 2 s, opened again whenever the server
closes them, and a client a second that asks for a new image and hangs up at once. Prints, per
kind of request, the count, errors (anything but a 200) and p50/p99 latency; and the
server's RSS every 30 s (memory over time: flat after warm-up is the target).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import random
import socket
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench.lib.harness import command_parser, parse_args, percentile_ms, rss_mb
from tests.helpers.registries import OCI, Registry

PACKAGES = ["hello", "zlib", "libffi", "expat", "ncurses", "readline", "pcre2", "oniguruma",
            "openssl", "curl", "perl", "git", "htop", "vim", "jq", "ripgrep"]  # fmt: skip
CACHED = ["hello", "shell/hello", "jq", "git/htop", "python3"]


class Results:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self._lock:
            self.latencies[kind].append(seconds)
            if error:
                self.errors[kind].append(error)

    def print_table(self) -> None:
        """Each kind's count, errors and p50/p99 latency."""
        print(f"{'requests':<16} {'count':>7} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}")
        for kind, seconds in sorted(self.latencies.items()):
            p50, p99 = percentile_ms(seconds, 0.5), percentile_ms(seconds, 0.99)
            print(f"{kind:<16} {len(seconds):7} {len(self.errors[kind]):7} {p50:8.1f} {p99:8.1f}")


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        return Client(conn).get(path)
    finally:
        conn.close()


class Client:
    """One keep-alive connection, as registry clients keep them, opened again after an
    error; a connection per request would run out of local ports within minutes."""

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            self.conn.request("GET", path, headers={"Accept": OCI})
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # the next request connects afresh
            raise

    def timed(self, results: Results, kind: str, path: str) -> bytes:
        started = time.monotonic()
        try:
            status, body = self.get(path)
            error = None if status == 200 else f"{status} {body[:200]!r}"
        except (OSError, http.client.HTTPException) as e:
            body, error = b"", f"{type(e).__name__}: {e}"
        results.add(kind, time.monotonic() - started, error)
        return body


def puller(port: int, results: Results, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    client = Client(http.client.HTTPConnection("127.0.0.1", port, timeout=300))
    while not stop.is_set():
        name = rng.choice(CACHED)
        body = client.timed(results, "cached manifest", f"/v2/{name}/manifests/latest")
        if body.startswith(b"{"):
            config = json.loads(body)["config"]["digest"]
            client.timed(results, "cached blob", f"/v2/{name}/blobs/{config}")


def builder(port: int, results: Results, stop: threading.Event, every: float) -> None:
    combos = itertools.chain(itertools.combinations(PACKAGES, 2),
                             itertools.combinations(PACKAGES, 3))  # fmt: skip
    client = Client(http.client.HTTPConnection("127.0.0.1", port, timeout=300))
    for combo in combos:
        if stop.wait(every):
            return
        client.timed(results, "new image", f"/v2/{'/'.join(combo)}/manifests/latest")


def slow_clients(port: int, stop: threading.Event, count: int = 100) -> None:
    """Header lines every 2 s on `count` connections; a closed one is opened again."""
    sources = itertools.cycle([f"127.0.0.{i}" for i in range(2, 12)])
    socks: list[socket.socket | None] = [None] * count
    while not stop.wait(2.0):
        for i in range(count):
            sock = socks[i]
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=2,
                                                    source_address=(next(sources), 0))  # fmt: skip
                    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
                    socks[i] = sock
                else:
                    sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                if sock is not None:
                    sock.close()
                socks[i] = None
    for sock in socks:
        if sock is not None:
            sock.close()


def hang_ups(port: int, stop: threading.Event) -> None:
    """Ask for a new image and hang up at once, every second (from many addresses)."""
    for n, combo in enumerate(itertools.combinations(PACKAGES, 4)):
        if stop.wait(1.0):
            return
        source = (f"127.0.1.{n % 200 + 1}", 0)
        pkgs = "/".join(combo)
        request = f"GET /v2/{pkgs}/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n"
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", port), 2, source_address=source)
            sock.sendall(request.encode())
            sock.close()


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--pullers", type=int, default=8)
    parser.add_argument("--build-every", type=float, default=5.0)
    parser.add_argument("--sample-every", type=float, default=30.0)
    args = parse_args(parser, minutes=0.25, pullers=2, build_every=2.0, sample_every=5.0)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        reg = Registry(Path(tmp) / "storage").start()
        try:
            assert reg.proc is not None
            for name in CACHED:  # warm-up: the cached images
                assert get(reg.port, f"/v2/{name}/manifests/latest")[0] == 200
            results, stop = Results(), threading.Event()
            threads = [threading.Thread(target=puller, args=(reg.port, results, stop, i))
                       for i in range(args.pullers)]  # fmt: skip
            threads += [
                threading.Thread(target=builder, args=(reg.port, results, stop, args.build_every)),
                threading.Thread(target=slow_clients, args=(reg.port, stop)),
                threading.Thread(target=hang_ups, args=(reg.port, stop)),
            ]
            for thread in threads:
                thread.start()
            samples = [(0.0, rss_mb(reg.proc.pid))]
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < args.minutes * 60:
                time.sleep(min(args.sample_every, args.minutes * 60 - elapsed))
                samples.append((time.monotonic() - started, rss_mb(reg.proc.pid)))
            stop.set()
            for thread in threads:
                thread.join(timeout=330)
        finally:
            reg.stop()
    print(f"{args.minutes:g} minutes, {args.pullers} pullers, a new image every "
          f"{args.build_every:g} s; 100 slow clients, a hang-up a second")  # fmt: skip
    results.print_table()
    for kind, errors in results.errors.items():
        for error in errors[:5]:
            print(f"  {kind} error: {error}")
    print("server RSS (MB) over time: " + ", ".join(f"{t:.0f}s {mb:.0f}" for t, mb in samples))
    later = [mb for t, mb in samples if t >= args.minutes * 60 / 3]
    if len(later) >= 2:
        print(f"after warm-up (the last two thirds): min {min(later):.0f} MB, max "
              f"{max(later):.0f} MB, last/first {later[-1] / later[0]:.2f}; "
              f"median {statistics.median(later):.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
