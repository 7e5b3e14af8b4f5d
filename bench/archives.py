"""Archive throughput: our layer writer against `tar -c PATHS | pigz -p N -6` on the same files.

    .venv/bin/python -m bench.archives [--gb 1] [--levels 1,2,3] [--runs 3] [--rss-gb 2] [--smoke]

The input is real software (directories of /usr/lib, taken in name order until --gb is
reached), read from the page cache (one warm-up pass first) and archived to /dev/null. The
writers take turns in every run, so that other load on the machine hits them alike: ours at
each ISA-L level in --levels, ours as it was before ISA-L (zlib level 2) and pigz -6. Each
row prints the throughput (MB of input per second, median of --runs) and its ratio to
pigz -6's, the compressed size and its ratio to pigz -6's, and for ISA-L whether the blob is
byte-identical when compressed on one thread. Then it archives --rss-gb of input in a fresh
process and prints that process's peak RSS. One ``Compressor`` per deflate (as many threads
as pigz gets) serves all of a run's turns, as in the registry.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path

from bench.lib.harness import command_parser, parse_args
from nixery.config import cpus
from nixery.oci.manifests import LayerBlob
from nixery.pipeline import archives


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


def zlib_deflate(data: bytes, window: bytes, level: int, last: bool) -> bytes:
    """The deflate of our writer before ISA-L."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, zdict=window)
    return compressor.compress(data) + compressor.flush(
        zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    )


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


def size_of(result: LayerBlob | int) -> int:
    return result if isinstance(result, int) else result.size


def peak_rss(gb: float, level: int) -> None:
    """Runs in a fresh process: archives `gb` of input and prints the peak RSS."""
    paths, total = pick_paths(gb)
    with closing(archives.Compressor()) as compressor:
        seconds, blob = ours(paths, level, compressor)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"archived {total / 1e9:.2f} GB of files (blob {blob.size / 1e9:.2f} GB) in "
          f"{seconds:.1f} s; peak RSS {rss:.0f} MB")  # fmt: skip


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--levels", default="1,2,3", help="ISA-L levels (0-3)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-gb", type=float, default=2.0)
    parser.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, gb=0.005, levels="2", runs=1, rss_gb=0.005)
    levels = [int(x) for x in args.levels.split(",")]
    if args.rss_only:
        peak_rss(args.rss_gb, levels[0])
        return
    threads = cpus()
    paths, total = pick_paths(args.gb)
    subprocess.run(["tar", "-cf", "/dev/null", *paths], check=True)  # warm the page cache
    print(f"input: {len(paths)} directories of /usr/lib, {total / 1e6:.0f} MB of files; "
          f"{threads} threads for each")  # fmt: skip
    with (
        closing(archives.Compressor(threads)) as isal,
        closing(archives.Compressor(threads, deflate=zlib_deflate)) as old,
        closing(archives.Compressor(threads=1)) as one_thread,
    ):
        writers: dict[str, Callable[[], tuple[float, LayerBlob | int]]] = {
            f"isal {level}": partial(ours, paths, level, isal) for level in levels
        }
        writers["zlib 2 (before)"] = partial(ours, paths, 2, old)
        writers["pigz -6"] = partial(pigz, paths, 6, threads)
        times: dict[str, list[float]] = {name: [] for name in writers}
        results: dict[str, LayerBlob | int] = {}
        for _ in range(args.runs):
            for name, write in writers.items():
                seconds, results[name] = write()
                times[name].append(seconds)
        print(f"{'writer':<16} {'MB/s':>7} {'x pigz -6':>9} {'blob MB':>8} {'/ pigz -6':>9} "
              f"{'1-thread identical':>19}")  # fmt: skip
        identical = {
            f"isal {level}": ours(paths, level, one_thread)[1] == results[f"isal {level}"]
            for level in levels
        }
        t_pigz, size_pigz = statistics.median(times["pigz -6"]), size_of(results["pigz -6"])
        for name, result in results.items():
            seconds, size = statistics.median(times[name]), size_of(result)
            same = {True: "yes", False: "NO", None: ""}[identical.get(name)]
            print(f"{name:<16} {total / 1e6 / seconds:7.1f} {t_pigz / seconds:9.2f} "
                  f"{size / 1e6:8.1f} {size / size_pigz:9.3f} {same:>19}")  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "bench.archives", "--rss-only", "--rss-gb", str(args.rss_gb),
         "--levels", str(archives.GZIP_LEVEL)],
        check=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
