"""Archive throughput: our layer writer against `tar -c PATHS | pigz -p N` on the same files.

    .venv/bin/python bench/archives.py [--gb 1] [--levels 1,6,9] [--runs 3] [--rss-gb 2] [--smoke]

The input is real software (directories of /usr/lib, taken in name order until --gb is
reached), read from the page cache (one warm-up pass first) and archived to /dev/null. For
each gzip level it prints both throughputs (MB of input per second; median of --runs, the
two taking turns so that other load on the machine hits both alike), their ratio, both
compressed sizes, and whether our blob is byte-identical when compressed on one thread. Then
it archives --rss-gb of input in a fresh process and prints that process's peak RSS. One
``Compressor`` (as many threads as pigz gets) serves all of a run's turns, as in the registry.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from common import parse_args

from nixery import archives
from nixery.manifests import LayerBlob


def tree_size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total


def pick_paths(gb: float) -> tuple[list[str], int]:
    """Directories of /usr/lib, smallest first, until their files add up to `gb`."""
    paths, total = [], 0
    for entry in sorted(Path("/usr/lib").iterdir(), key=lambda e: (tree_size(e), e.name)):
        if total >= gb * 1e9:
            break
        if entry.is_dir() and not entry.is_symlink() and os.access(entry, os.R_OK):
            paths.append(str(entry))
            total += tree_size(entry)
    return paths, total


def ours(paths: list[str], level: int, compressor: archives.Compressor) -> tuple[float, LayerBlob]:
    with open(os.devnull, "wb") as out:
        started = time.perf_counter()
        blob = archives.write_store_layer(paths, out, compressor, level)
        return time.perf_counter() - started, blob


def pigz(paths: list[str], level: int, threads: int) -> tuple[float, int]:
    tar = ["tar", "-c", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
           "--mtime=@1", "-f", "-", *paths]  # fmt: skip
    started = time.perf_counter()
    t = subprocess.Popen(tar, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    z = subprocess.Popen(
        ["pigz", "-p", str(threads), f"-{level}", "-n"], stdin=t.stdout, stdout=subprocess.PIPE
    )
    size = subprocess.run(["wc", "-c"], stdin=z.stdout, capture_output=True, text=True).stdout
    t.wait()
    z.wait()
    return time.perf_counter() - started, int(size)


def peak_rss(gb: float, level: int) -> None:
    """Runs in a fresh process: archives `gb` of input and prints the peak RSS."""
    paths, total = pick_paths(gb)
    with closing(archives.Compressor()) as compressor:
        seconds, blob = ours(paths, level, compressor)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"archived {total / 1e9:.2f} GB of files (blob {blob.size / 1e9:.2f} GB) in "
          f"{seconds:.1f} s; peak RSS {rss:.0f} MB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--levels", default="1,6,9")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-gb", type=float, default=2.0)
    parser.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, gb=0.005, levels="2", runs=1, rss_gb=0.005)
    levels = [int(x) for x in args.levels.split(",")]
    if args.rss_only:
        peak_rss(args.rss_gb, levels[0])
        return
    threads = os.cpu_count() or 1
    paths, total = pick_paths(args.gb)
    subprocess.run(["tar", "-cf", "/dev/null", *paths], check=True)  # warm the page cache
    print(f"input: {len(paths)} directories of /usr/lib, {total / 1e6:.0f} MB of files; "
          f"{threads} threads for both")  # fmt: skip
    print(f"{'level':>5} {'ours MB/s':>10} {'pigz MB/s':>10} {'ratio':>6} "
          f"{'ours MB':>8} {'pigz MB':>8} {'1-thread identical':>19}")  # fmt: skip
    with (
        closing(archives.Compressor(threads)) as compressor,
        closing(archives.Compressor(threads=1)) as one_thread,
    ):
        for level in levels:
            pigz_runs, our_runs = [], []
            for _ in range(args.runs):
                t_pigz, size_pigz = pigz(paths, level, threads)
                pigz_runs.append(t_pigz)
                t_ours, blob = ours(paths, level, compressor)
                our_runs.append(t_ours)
            t_pigz, t_ours = statistics.median(pigz_runs), statistics.median(our_runs)
            _, single = ours(paths, level, one_thread)
            print(f"{level:5} {total / 1e6 / t_ours:10.1f} {total / 1e6 / t_pigz:10.1f} "
                  f"{t_pigz / t_ours:6.2f} {blob.size / 1e6:8.1f} {size_pigz / 1e6:8.1f} "
                  f"{'yes' if single == blob else 'NO':>19}")  # fmt: skip
    subprocess.run(
        [sys.executable, __file__, "--rss-only", "--rss-gb", str(args.rss_gb),
         "--levels", str(archives.GZIP_LEVEL)],
        check=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
