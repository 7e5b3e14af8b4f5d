"""A two-platform build against a one-platform build of the same name, with `nixery build`.

    .venv/bin/python -m bench.platforms [IMAGE] [--runs N] [--smoke]

Each run builds IMAGE into empty storage (no layer cache, a temporary directory), once with
NIXERY_PLATFORMS=x86_64-linux and once with x86_64-linux,aarch64-linux, alternating. Nix
builds the demo set's aarch64-linux derivations with the host's busybox (extra-platforms),
and its store is warm after the first run (run 0, not counted): the figures are evaluation,
layering and archiving, the registry's own work, per platform. With real nixpkgs each
platform also fetches its own closure from the binary cache. Prints medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.lib.harness import command_parser, parse_args
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, MULTI_PLATFORM, NIXERY

ONE = "x86_64-linux"


def build(image: str, platforms: str, out: Path) -> float:
    env = {
        **os.environ,
        **MULTI_PLATFORM,
        "NIXERY_PLATFORMS": platforms,
        "NIXERY_PKGS_PATH": str(DEMO),
        "NIXERY_EVAL_ALLOW": DEMO_EVAL_ALLOW,
    }
    env.pop("STORAGE_PATH", None)
    started = time.perf_counter()
    subprocess.run([str(NIXERY), "build", image, "-o", str(out), "--log-level", "WARNING"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("image", nargs="?", default="shell/git/python3")
    parser.add_argument("--runs", type=int, default=5)
    args = parse_args(parser, image="hello", runs=1)
    times: dict[str, list[float]] = {ONE: [], MULTI_PLATFORM["NIXERY_PLATFORMS"]: []}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="nixery-bench-") as work:
        for run in range(args.runs + 1):
            for platforms, seconds in times.items():
                out = Path(work) / "image.tar"
                took = build(args.image, platforms, out)
                sizes[platforms] = out.stat().st_size
                if run:
                    seconds.append(took)
    print(f"image {args.image}, {args.runs} runs, `nixery build` to an OCI archive, warm Nix store")
    for platforms, seconds in times.items():
        print(
            f"NIXERY_PLATFORMS={platforms}: median {statistics.median(seconds):.2f}s, "
            f"{sizes[platforms] / 1e6:.1f} MB (runs: {', '.join(f'{t:.2f}' for t in seconds)})"
        )


if __name__ == "__main__":
    main()
