"""What the benchmark commands share: `--smoke`, Nix's test configuration, skopeo copies,
figures read from output.

The registries themselves come from the tests' helpers (`tests.helpers.registries.Registry`
runs `nixery serve`), so that the benchmarks measure what the tests check.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import time
from pathlib import Path

from tests.helpers.registries import NIX_CONFIG

ENV = {**os.environ, "NIX_CONFIG": NIX_CONFIG}


def command_parser(doc: str | None) -> argparse.ArgumentParser:
    """A command's parser, described by the first paragraph of its docstring (`__doc__`)."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def parse_args(parser: argparse.ArgumentParser, **smoke: object) -> argparse.Namespace:
    """The arguments, with `--smoke` added: it sets the options given here (tiny inputs, one
    run), so that the same code runs in seconds; tests/e2e/test_bench.py runs every command so."""
    shown = ", ".join(f"{k.replace('_', '-')}={v}" for k, v in smoke.items())
    parser.add_argument(
        "--smoke", action="store_true", help=f"a check in seconds, not a measure: {shown}"
    )
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(smoke)
        print(f"smoke run ({shown}): the figures below are not measurements", flush=True)
    return args


def figure(pattern: str, output: str) -> str:
    """What `pattern`'s first group captures in a tool's output or a log (lines matched with
    re.MULTILINE); an error naming the pattern, with the output, when the format changed."""
    found = re.search(pattern, output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {pattern!r} in:\n{output}")
    return found.group(1)


def skopeo_copy(src: str, dest: str) -> float:
    """Seconds of one `skopeo copy` between two transports (registries over plain HTTP)."""
    started = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", src, dest],
        check=True,
    )
    return time.perf_counter() - started


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB (0 once it is gone)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of the values, by nearest rank; NaN without values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def percentile_ms(seconds: list[float], q: float) -> float:
    """The ``q`` quantile of durations in seconds, in milliseconds (nearest rank)."""
    return percentile(seconds, q) * 1000


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process (all its threads), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
