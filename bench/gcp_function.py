"""The registry function's cold start and warm manifest latency, against the emulators.

    .venv/bin/python -m bench.gcp_function [--requests N] [--imports N] [--smoke]

Cold import: a fresh interpreter importing the function's module (what a cold instance does
before it can answer the /v2/ ping), then importing the Google Cloud wiring the first real
request loads. Warm latency: manifest GETs of a cached image through functions-framework,
with the same requests against local mode (`nixery serve`) as the reference in this run,
each beside its `/v2/` ping (answered before the registry's app: the floor of the server and
the client).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.lib.harness import command_parser, parse_args
from tests.helpers.emulators import Emulators, GcpRegistry
from tests.helpers.registries import OCI, REPO, Registry


def import_seconds(module: str, cwd: Path, runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=cwd, env=env, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def latencies(url: str, n: int, path: str = "/v2/shell/hello/manifests/latest") -> list[float]:
    session = requests.Session()
    path = url + path
    session.headers["Accept"] = OCI
    session.get(path, timeout=300).raise_for_status()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        session.get(path, timeout=30).raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--imports", type=int, default=5, help="fresh interpreters per import")
    args = parse_args(parser, requests=5, imports=1)
    root = Path(tempfile.mkdtemp(prefix="nixery-bench-"))
    emulators = Emulators(root / "emulators")
    gcp = GcpRegistry(root / "gcp", emulators).start()
    local = Registry(root / "local").start()
    try:
        # The function checks its settings on import: it gets those it is deployed with.
        baseline = import_seconds("sys", REPO, args.imports, gcp.env)
        entry = import_seconds("main", REPO / "functions" / "registry", args.imports, gcp.env)
        wiring = import_seconds("nixery.gcp.registry_app", REPO, args.imports, gcp.env)
        print(
            f"python startup {baseline:.3f}s; import of the function module {entry:.3f}s "
            f"(ping-ready); import of the Google Cloud wiring {wiring:.3f}s (first request)"
        )
        for name, reg in (("function (Firestore emulator)", gcp), ("local mode", local)):
            ms = latencies(reg.url, args.requests)
            ping = latencies(reg.url, args.requests, "/v2/")
            p50, p90 = ms[len(ms) // 2], ms[int(len(ms) * 0.9)]
            print(
                f"warm manifest GET, {name}: p50 {p50:.2f} ms, p90 {p90:.2f} ms, n={len(ms)}; "
                f"the /v2/ ping's p50 (the server and client alone) {ping[len(ping) // 2]:.2f} ms"
            )
    finally:
        gcp.stop()
        local.stop()
        emulators.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
