"""Cold build of an image whose layers mostly exist already: time must follow the NEW bytes.

    .venv/bin/python -m bench.incremental [--runs 3] [--base IMAGE] [--extra PACKAGE] [--smoke]

With a local registry (demo set), BASE is built first; then BASE plus one small package is
requested, and its build is timed (manifest request to response) and compared with the same
image built on empty storage. The registry's own log gives the archive step's time and how
many layers it archived or reused. The Nix store is warm in both cases: this measures the
registry's side, which is what reusing layers can save.
"""

from __future__ import annotations

import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.lib.harness import command_parser, parse_args
from tests.helpers.registries import OCI, Registry

BASE = "shell/git/python3/perl/vim/ripgrep/1password/python3packages.numpy"
EXTRA = "htop"


def build(registry: Registry, image: str) -> float:
    """Seconds from the manifest request to its response: the whole build when not cached."""
    started = time.perf_counter()
    registry.get(
        f"/v2/{image}/manifests/latest", headers={"Accept": OCI}, timeout=600
    ).raise_for_status()
    return time.perf_counter() - started


def archive_step(registry: Registry) -> tuple[float, str]:
    """The last build's archive step, from the registry's log: seconds, new/reused counts."""
    found = re.findall(r"archives done in ([\d.]+)s (new=\d+ reused=\d+)", registry.log())
    if not found:
        raise RuntimeError(f"no archive step in the registry's log:\n{registry.log()}")
    return float(found[-1][0]), found[-1][1]


def stored_bytes(registry: Registry) -> int:
    return sum(f.stat().st_size for f in registry.storage.rglob("*") if f.is_file())


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", default=BASE, help="the image built first")
    parser.add_argument("--extra", default=EXTRA, help="the package then added to it")
    args = parse_args(parser, runs=1, base="shell", extra="hello")
    image = f"{args.base}/{args.extra}"
    work = Path(tempfile.mkdtemp(prefix="nixery-incremental-"))
    cold, warm = [], []
    try:
        for run in range(args.runs + 1):  # run 0 builds the Nix store paths: not counted
            registry = Registry(work / f"cold{run}").start()
            try:
                total = build(registry, image)
                cold.append((total, *archive_step(registry)))
                cold_bytes = stored_bytes(registry)
            finally:
                registry.stop()
            registry = Registry(work / f"warm{run}").start()
            try:
                build(registry, args.base)
                before = stored_bytes(registry)
                total = build(registry, image)
                warm.append((total, *archive_step(registry)))
                new_bytes = stored_bytes(registry) - before
            finally:
                registry.stop()
        cold, warm = cold[1:], warm[1:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"image {image} (demo set), {args.runs} runs, medians")
    for label, runs, size in (
        ("empty storage", cold, cold_bytes),
        (f"{args.base} built", warm, new_bytes),
    ):
        print(f"  {label:>60}: build {statistics.median(r[0] for r in runs):.2f} s, "
              f"archives {statistics.median(r[1] for r in runs):.2f} s ({runs[-1][2]}), "
              f"{size / 1e6:.1f} MB stored")  # fmt: skip


if __name__ == "__main__":
    main()
