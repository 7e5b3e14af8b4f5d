"""The cold pull of one image, step by step, in Google Cloud mode on the emulators beside
local mode.

    .venv/bin/python -m bench.cold_steps [--image shell/hello] [--runs N] [--smoke]

Cold: the registry never built the image (fresh storage, or a fresh Firestore prefix and an
empty bucket), while its store paths are already in the Nix store, so the figures are the
registry's own cost around Nix. Each run starts the services afresh and first pulls an image
of an unknown package (a quick 422), so that their connections to the emulators are open, as
on instances that served before. The manifest request is timed by the client; the build's
report (`/api/v1/builds/<key>`) gives each step's times, and the gaps between steps are
printed as such, so that every part of the client's wait is shown. Medians over the runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import requests

from bench.lib.harness import command_parser, parse_args
from tests.helpers.emulators import BUCKET, PROJECT, Emulators, GcpRegistry
from tests.helpers.registries import OCI, Registry

Row = tuple[str, float]  # a step or a gap, and its seconds
# Seconds each service took to start, on this machine (no part of a pull: a cold instance's).
STARTS: dict[str, list[float]] = {}


def build_key(reg: Registry, name: str) -> str:
    """The key of the latest build of ``name``, from the front page's JSON (kept in memory
    for seconds by the registry, hence the wait)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        builds = reg.get("/api/v1/registry").json()["builds"]
        for build in builds:
            if build["name"] == name and build["status"] == "published":
                return str(build["key"])
        time.sleep(0.5)
    raise RuntimeError(f"no published build of {name} listed")


def breakdown(report: dict[str, Any], asked: float, answered: float) -> list[Row]:
    """The client's wait, in order: the time to the first step (the request, its record,
    the enqueue), each step, the gaps between them, and the end of the last step (the
    registry's ``answer``: it learnt of the publication) to the client's answer."""
    steps = sorted(report["steps"], key=lambda s: s["began"])
    rows: list[Row] = [("request until enqueue", steps[0]["began"] - asked)]
    covered = steps[0]["began"]
    for s in steps:
        if s["began"] > covered:
            rows.append((f"(between, before {s['step']})", s["began"] - covered))
        # Overlapping steps (uploads during archiving) count only what they add.
        rows.append((s["step"], max(0.0, s["ended"] - max(s["began"], covered))))
        covered = max(covered, s["ended"])
    rows.append(("reply (the last step's end to the client)", answered - covered))
    return rows


def cold_pull(reg: Registry, image: str) -> tuple[float, list[Row]]:
    """One cold pull of ``image``'s manifest: the client's seconds and their breakdown."""
    warm = reg.get("/v2/shell/nosuchpackage/manifests/latest", headers={"Accept": OCI})
    if warm.status_code != 422:
        raise RuntimeError(f"warm-up: {warm.status_code} {warm.text[:300]}")
    asked = time.time()
    started = time.perf_counter()
    got = reg.get(f"/v2/{image}/manifests/latest", headers={"Accept": OCI})
    seconds = time.perf_counter() - started
    answered = time.time()
    if got.status_code != 200:
        raise RuntimeError(f"cold pull of {image}: {got.status_code} {got.text[:500]}")
    key = build_key(reg, image)
    deadline = time.monotonic() + 30  # the answer is noted off the request's path
    while not _answered(report := reg.get(f"/api/v1/builds/{key}").json()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer step in {report['steps']}")
        time.sleep(0.5)
    return seconds, breakdown(report, asked, answered)


def _answered(report: dict[str, Any]) -> bool:
    """Whether the report has its answer step (its last; a report may have no steps yet)."""
    steps = report.get("steps") or []
    return bool(steps) and steps[-1]["step"] == "answer"


@contextmanager
def local_registry(root: Path) -> Iterator[Registry]:
    reg = Registry(root / f"local-{uuid.uuid4().hex[:8]}").start()
    try:
        yield reg
    finally:
        reg.stop()


def empty_bucket(emulators: Emulators) -> None:
    base = f"http://127.0.0.1:{emulators.gcs_port}/storage/v1/b/{BUCKET}/o"
    for item in requests.get(base, timeout=30).json().get("items", []):
        name = urllib.parse.quote(item["name"], safe="")
        requests.delete(f"{base}/{name}", timeout=30).raise_for_status()


def gcp_registry(
    emulators: Emulators, root: Path
) -> Callable[[], AbstractContextManager[Registry]]:
    @contextmanager
    def start() -> Iterator[Registry]:
        empty_bucket(emulators)
        reg = GcpRegistry(
            root / f"gcp-{uuid.uuid4().hex[:8]}", emulators,
            NIXERY_FIRESTORE_PREFIX=f"b{uuid.uuid4().hex[:8]}_", NIX_TIMEOUT="600",
        )  # fmt: skip
        try:
            began = time.perf_counter()
            reg.start_builder()
            started = time.perf_counter()
            reg.start_registry()
            STARTS.setdefault("builder's start, to its first health check", []).append(
                started - began
            )
            STARTS.setdefault("registry function's start, to its first /v2/", []).append(
                time.perf_counter() - started
            )
            yield reg
        finally:
            reg.stop()

    return start


def measure(start: Callable[[], Any], image: str, runs: int) -> dict[str, Any]:
    totals: list[float] = []
    rows: dict[str, list[float]] = {}
    for _ in range(runs):
        with start() as reg:
            seconds, breakdown_ = cold_pull(reg, image)
        totals.append(seconds)
        for name, took in breakdown_:
            rows.setdefault(name, []).append(took)
    return {"total": totals, "rows": rows}


def print_side_by_side(image: str, local: dict[str, Any], gcp: dict[str, Any]) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    print(f"\n== cold pull of {image}: the client's wait, step by step (median seconds) ==")
    print(f"{'':44} {'local':>8} {'Google Cloud (emulators)':>26}")
    names = list(gcp["rows"])
    names += [n for n in local["rows"] if n not in names]
    for name in names:
        here = local["rows"].get(name, [])
        there = gcp["rows"].get(name, [])
        print(f"{name:44} {median(here):8.3f} {median(there):26.3f}")
    lt, gt = median(local["total"]), median(gcp["total"])
    print(f"{'total, as the client saw it':44} {lt:8.3f} {gt:26.3f}")
    print(f"Google Cloud mode adds {gt - lt:.3f} s (runs: local {rounded(local['total'])}, "
          f"Google Cloud {rounded(gcp['total'])})")  # fmt: skip
    for name, seconds in STARTS.items():
        print(f"{name}: median {median(seconds):.2f} s of {rounded(seconds)}")


def rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--image", default="shell/hello")
    parser.add_argument("--runs", type=int, default=5)
    args = parse_args(parser, runs=1)
    root = Path(tempfile.mkdtemp(prefix="nixery-cold-steps-"))
    emulators = Emulators(root / "emulators")
    try:
        measure(gcp_registry(emulators, root), args.image, 1)  # the Nix store, realised
        gcp = measure(gcp_registry(emulators, root), args.image, args.runs)
        local = measure(lambda: local_registry(root), args.image, args.runs)
    finally:
        emulators.stop()
    print(f"project {PROJECT}, logs in {root}")
    print_side_by_side(args.image, local, gcp)


if __name__ == "__main__":
    main()
