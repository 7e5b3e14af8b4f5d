"""The registry function's cold start and warm manifest latency, against the emulators.

    .venv/bin/python bench/gcp_function.py [--requests N]

Cold import: a fresh interpreter importing the function's module (what a cold instance does
before it can answer the /v2/ ping), then importing the Google Cloud wiring the first real
request loads. Warm latency: manifest GETs of a cached image through functions-framework,
with the same requests against local mode (`nixery serve`) as the reference in this run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import Registry  # noqa: E402
from emulators import Emulators, GcpRegistry  # noqa: E402

OCI = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def import_seconds(module: str, cwd: Path, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=cwd, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def latencies(url: str, n: int) -> list[float]:
    session = requests.Session()
    path = f"{url}/v2/shell/hello/manifests/latest"
    assert session.get(path, headers=OCI, timeout=300).status_code == 200
    out = []
    for _ in range(n):
        started = time.perf_counter()
        session.get(path, headers=OCI, timeout=30).raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    baseline = import_seconds("sys", REPO)
    entry = import_seconds("main", REPO / "functions" / "registry")
    wiring = import_seconds("nixery.gcp.apps", REPO)
    print(
        f"python startup {baseline:.3f}s; import of the function module {entry:.3f}s "
        f"(ping-ready); import of the Google Cloud wiring {wiring:.3f}s (first request)"
    )

    root = Path(tempfile.mkdtemp(prefix="nixery-bench-"))
    emulators = Emulators(root / "emulators")
    gcp = GcpRegistry(root / "gcp", emulators).start()
    local = Registry(root / "local").start()
    try:
        for name, reg in (("function (Firestore emulator)", gcp), ("local mode", local)):
            ms = latencies(reg.url, args.requests)
            p50, p90 = ms[len(ms) // 2], ms[int(len(ms) * 0.9)]
            print(f"warm manifest GET, {name}: p50 {p50:.1f} ms, p90 {p90:.1f} ms, n={len(ms)}")
    finally:
        gcp.stop()
        local.stop()
        emulators.stop()


if __name__ == "__main__":
    main()
