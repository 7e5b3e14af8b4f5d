"""What reading a flake costs: cold and warm plans of a flake against the same package set
served as default.nix, and the first fetch of the flake's inputs.

    .venv/bin/python -m bench.flakes [IMAGE] [--runs N] [--smoke]

The flake is tests/helpers/flakes.py's: the demo set as its legacyPackages, busybox from a
locked git input. A plan is what a build evaluates before Nix builds anything (for a flake
also copying the checkout into the store and reading its lock), timed in this process with
nixery.nix.runner's Nix, its derivations already built. Each run makes a new flake whose
input is new to the store (a nonce in the input's repository), then times:

- cold, first fetch: a new Nix object (nothing known of the checkout) and a new HOME (Nix's
  fetcher cache empty), so Nix fetches the input from its git repository: the first build of
  a revision on a new builder instance, or whose inputs no earlier revision shared;
- cold: a new Nix object, Nix's caches as the first fetch left them (the first build of a
  revision whose inputs an earlier one fetched, or after a restart that kept HOME);
- warm: the same Nix object again, as every later build of the revision;
- default.nix: the demo set itself (host busybox), read as NIXERY_PKGS_PATH is. Nix keeps
  nothing between such evaluations, so it has no cold state of its own.

Prints medians.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.lib.harness import ENV, command_parser, parse_args
from nixery.nix.runner import Nix
from nixery.records import FlakeOrigin
from nixery.request import parse_name
from nixery.sources.git import GitSource
from tests.helpers.flakes import flake_repo
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, REPO

SYSTEM = "x86_64-linux"


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("image", nargs="?", default="shell/git/htop")
    parser.add_argument("--runs", type=int, default=5)
    args = parse_args(parser, runs=1, image="hello")
    request = parse_name(args.image)
    packages, optional = list(request.packages), request.optional
    work = Path(tempfile.mkdtemp(prefix="nixery-bench-flakes-"))
    os.environ.update(ENV)  # Nix's test configuration, for the Nix calls of this process
    # The runs' busybox repositories, the flakes' local inputs, lie under ``work``.
    allow = [*(Path(p) for p in DEMO_EVAL_ALLOW.split(":")), work]

    def new_nix(home: bool) -> Nix:
        """A Nix object with nothing known of any checkout; with ``home``, Nix's caches new."""
        if home:
            fresh = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
            os.environ.update(HOME=str(fresh), XDG_CACHE_HOME=str(fresh / ".cache"))
        return Nix(REPO / "prepare-image", 60, allow)

    # The plan alone is timed, without a build: Nix's private steps, on purpose (the
    # registry has no use for a public plan-only entry).
    def flake_plan(nix: Nix, checkout: Path, origin: FlakeOrigin) -> float:
        started = time.perf_counter()
        locked = nix._lock(checkout, origin, math.inf)
        nix._plan(checkout, packages, SYSTEM, math.inf, locked, optional)
        return time.perf_counter() - started

    def default_plan(nix: Nix) -> float:
        started = time.perf_counter()
        nix._plan(DEMO, packages, SYSTEM, math.inf)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"first fetch": [], "cold": [], "warm": [], "default": []}
    for run in range(args.runs + 1):  # run 0 builds the derivations, untimed
        repo = flake_repo(work / f"run{run}", nonce=uuid.uuid4().hex)
        source = GitSource(repo.url, work / f"run{run}" / "cache")
        revision = source.resolve("latest")
        assert revision is not None
        checkout, origin = source.checkout(revision), source.flake_origin(revision)
        assert origin is not None, "a git source reads a flake as one"
        fetching = flake_plan(new_nix(home=True), checkout, origin)
        cold = flake_plan(new_nix(home=False), checkout, origin)
        nix = new_nix(home=False)
        flake_plan(nix, checkout, origin)
        warm = flake_plan(nix, checkout, origin)
        default = default_plan(nix)
        if run == 0:
            with nix.build(checkout, packages, SYSTEM, flake=origin, optional=optional):
                pass
            with nix.build(DEMO, packages, SYSTEM):
                pass
            continue
        for name, value in zip(times, (fetching, cold, warm, default), strict=True):
            times[name].append(value)
    print(f"{args.image}: plan, median of {args.runs} runs")
    for name, values in times.items():
        print(f"  {name:12} {statistics.median(values) * 1000:7.0f} ms")
    extra = statistics.median(times["first fetch"]) - statistics.median(times["cold"])
    print(f"  the first fetch of the inputs adds {extra * 1000:.0f} ms")


if __name__ == "__main__":
    main()
