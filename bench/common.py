"""What the bench scripts share: the tests' registry harness, skopeo copies and `--smoke`.

Every script runs as `.venv/bin/python bench/NAME.py`, which puts bench/ on the path; this
module adds tests/, whose `conftest.Registry` runs `nixery serve` for the benchmarks too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from tests.helpers.registries import NIX_CONFIG, OCI, Registry, free_port  # noqa: E402

__all__ = ["ENV", "OCI", "REPO", "Registry", "free_port", "parse_args", "skopeo_copy"]

ENV = {**os.environ, "NIX_CONFIG": NIX_CONFIG}


def parse_args(parser: argparse.ArgumentParser, **smoke: object) -> argparse.Namespace:
    """The arguments, with `--smoke` added: it sets the options given here (tiny inputs, one
    run), so that the same code runs in seconds; tests/test_bench.py runs every script so."""
    shown = ", ".join(f"{k.replace('_', '-')}={v}" for k, v in smoke.items())
    parser.add_argument(
        "--smoke", action="store_true", help=f"a check in seconds, not a measure: {shown}"
    )
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(smoke)
        print(f"smoke run ({shown}): the figures below are not measurements", flush=True)
    return args


def skopeo_copy(src: str, dest: str) -> float:
    """Seconds of one `skopeo copy` between two transports (registries over plain HTTP)."""
    started = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", src, dest],
        check=True,
    )
    return time.perf_counter() - started
