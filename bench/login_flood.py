"""A flood of wrong passwords against a private registry, while clients that logged in pull.

    .venv/bin/python -m bench.login_flood [--seconds 60] [--connections 200] [--addresses 8]
                                          [--smoke]

One `nixery serve` (demo set, `NIXERY_AUTH=basic`, its limits as shipped). Warm-up: `hello`
built and pulled once with a good password. Then for --seconds: --connections keep-alive
connections from --addresses loopback addresses (127.0.0.2 and up) send wrong passwords for
made-up user names as fast as they are answered, whatever the answer (a stranger ignores
Retry-After); meanwhile the client that logged in pulls `hello`'s manifest once a second, and
a new client logs in (a user not seen yet, with its good password) every 5 s. Prints each
kind's count, errors (anything but a 200) and p50/p99 latency, the flood's answers by status,
the passwords the server checked, and the CPU time it spent and this process spent (the
attackers and the clients, on the same cores: what the server was left).
"""

from __future__ import annotations

import http.client
import itertools
import os
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.lib.harness import command_parser, cpu_seconds, parse_args
from bench.soak import Results
from nixery.http.auth import hash_password
from tests.helpers.protocol import basic
from tests.helpers.registries import OCI, Registry

PASSWORD = "correct horse battery staple"
USERS = 100  # users with that password: one a new login


def login(user: str, password: str) -> dict[str, str]:
    return {"Authorization": basic(user, password), "Accept": OCI}


def ask(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> int:
    """One request on a keep-alive connection, closed after an error to connect afresh."""
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        raise


def timed(results: Results, kind: str, port: int, path: str, headers: dict[str, str],
          conn: http.client.HTTPConnection | None = None) -> None:  # fmt: skip
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.monotonic()
    try:
        status = ask(conn, path, headers)
        error = None if status == 200 else str(status)
    except (OSError, http.client.HTTPException) as e:
        error = type(e).__name__
    results.add(kind, time.monotonic() - started, error)


def attacker(port: int, source: str, answers: Counter[str], stop: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    while not stop.is_set():
        try:
            status = str(ask(conn, "/v2/", login(uuid.uuid4().hex[:12], "wrong")))
        except (OSError, http.client.HTTPException) as e:
            status = type(e).__name__
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                              source_address=(source, 0))  # fmt: skip
        answers[status] += 1


def puller(port: int, results: Results, stop: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while not stop.wait(1.0):
        timed(results, "logged-in pull", port, "/v2/hello/manifests/latest",
              login("user0", PASSWORD), conn)  # fmt: skip


def new_logins(port: int, results: Results, stop: threading.Event) -> None:
    for n in itertools.count(1):
        if stop.wait(5.0) or n >= USERS:
            return
        timed(results, "new login", port, "/v2/", login(f"user{n}", PASSWORD))


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--addresses", type=int, default=8)
    args = parse_args(parser, seconds=6.0, connections=8, addresses=2)
    hashed = hash_password(PASSWORD)
    users = ",".join(f"user{n}:{hashed}" for n in range(USERS))
    with tempfile.TemporaryDirectory(prefix="bench-login-flood-") as tmp:
        reg = Registry(Path(tmp) / "storage", NIXERY_AUTH="basic", NIXERY_AUTH_USERS=users)
        reg.start()
        try:
            assert reg.proc is not None
            warm = reg.get("/v2/hello/manifests/latest", headers=login("user0", PASSWORD))
            assert warm.status_code == 200, warm.text
            results, stop = Results(), threading.Event()
            counts = [Counter[str]() for _ in range(args.connections)]  # one per thread
            sources = itertools.cycle([f"127.0.0.{i + 2}" for i in range(args.addresses)])
            threads = [threading.Thread(target=attacker, args=(reg.port, s, c, stop))
                       for s, c in zip(sources, counts, strict=False)]  # fmt: skip
            threads += [threading.Thread(target=f, args=(reg.port, results, stop))
                        for f in (puller, new_logins)]  # fmt: skip
            cpu, own = cpu_seconds(reg.proc.pid), cpu_seconds(os.getpid())
            for thread in threads:
                thread.start()
            time.sleep(args.seconds)
            stop.set()
            for thread in threads:
                thread.join(timeout=330)
            cpu, own = cpu_seconds(reg.proc.pid) - cpu, cpu_seconds(os.getpid()) - own
            answers = sum(counts, Counter[str]())
            checked = len(re.findall(r"refused [0-9a-f]{12} from", reg.log()))
        finally:
            reg.stop()
    print(f"{args.seconds:g} s; wrong passwords on {args.connections} connections from "
          f"{args.addresses} addresses")  # fmt: skip
    results.print_table()
    for kind, errors in results.errors.items():
        print(f"  {kind} errors: {dict(Counter(errors))}")
    print(f"flood: {sum(answers.values())} answers {dict(answers)}; wrong passwords checked: "
          f"{checked}; CPU in {args.seconds:g} s: server {cpu:.1f} s, attackers and clients "
          f"{own:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
