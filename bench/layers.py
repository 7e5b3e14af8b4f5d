"""Layering benchmark: bytes one client downloads over a sequence of image pulls.

    .venv/bin/python bench/layers.py [--budget 100] [--no-demo]

For each workload (a sequence of image requests over a package set) and each algorithm, one
simulated client pulls the images in order and keeps every layer it has seen; a layer is
downloaded when its exact set of store paths (so its digest) is new to the client. Bytes are
narSize. The lower bound is the bytes of store paths the client has never had; the ratio
downloaded / lower bound is 1 for perfect sharing. Like the builder, the algorithms get the
budget minus one (the image-root layer is added after them and is not counted here).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import graphs
import rivals

from nixery.layers import plan_layers

Planner = Callable[[Mapping, Sequence[str], Mapping[str, int], int], list[list[str]]]

ALGORITHMS: dict[str, Planner] = {
    "single layer": rivals.single_layer,
    "nixery": rivals.nixery,
    "auto-layer": rivals.autolayer,
    "ours": plan_layers,
}


@dataclass
class Workload:
    name: str
    pkgs: graphs.PackageSet
    images: list[list[str]]  # attribute names
    budget: int


@dataclass
class Result:
    downloaded: int = 0
    lower: int = 0
    layers: list[int] | None = None

    @property
    def ratio(self) -> float:
        return self.downloaded / self.lower


def simulate(work: Workload, plan: Planner, popularity: Mapping[str, int]) -> Result:
    seen_layers: set[tuple[str, ...]] = set()
    seen_paths: set[str] = set()
    result = Result(layers=[])
    for image in work.images:
        roots = sorted({work.pkgs.packages[a] for a in image} | set(work.pkgs.always))
        closure = work.pkgs.closure(roots)
        layers = plan(closure, roots, popularity, work.budget - 1)
        assert sorted(p for layer in layers for p in layer) == sorted(closure)
        assert len(layers) <= work.budget - 1
        result.layers.append(len(layers) + 1)
        for layer in layers:
            key = tuple(layer)
            if key not in seen_layers:
                seen_layers.add(key)
                result.downloaded += sum(closure[p]["narSize"] for p in layer)
        new = set(closure) - seen_paths
        result.lower += sum(closure[p]["narSize"] for p in new)
        seen_paths |= new
    return result


def synthetic_workloads(budget: int) -> list[Workload]:
    pkgs = graphs.synthetic()
    rng = random.Random(7)
    names = sorted(pkgs.packages)
    ranked = names[:]
    rng.shuffle(ranked)
    zipf = [1 / (i + 1) for i in range(len(ranked))]

    def pick(k: int) -> list[str]:
        return rng.choices(ranked, zipf, k=k)

    def csize(name: str) -> int:
        return len(pkgs.closure([pkgs.packages[name]]))

    big = [n for n in names if csize(n) >= 300]
    rng.shuffle(big)
    base = pick(3)
    grow: list[list[str]] = [pick(1)]
    for _ in range(29):
        grow.append(grow[-1] + pick(1))
    return [
        Workload("tools (150 images of 1-3 Zipf-popular packages)", pkgs,
                 [pick(rng.randint(1, 3)) for _ in range(150)], budget),
        Workload("grow (one image, a package added 30 times)", pkgs, grow, budget),
        Workload("apps (40 packages with 300+ path closures)", pkgs,
                 [[n] for n in big[:40]], budget),
        Workload("stack (3 fixed packages + 1 varying, 60 images)", pkgs,
                 [[*base, n] for n in pick(60)], budget),
        Workload("big (20 images of 6 large packages, 1,500-3,000 paths)", pkgs,
                 [rng.sample(big, 6) for _ in range(20)], budget),
    ]  # fmt: skip


def demo_workloads(budget: int) -> list[Workload]:
    pkgs = graphs.demo()
    shell = ["bashInteractive", "coreutils", "moreutils", "nano"]
    images = [
        ["hello"], shell, [*shell, "git"], [*shell, "git", "htop"], [*shell, "vim"],
        ["python3Packages.requests"], ["python3Packages.numpy"], ["jq", "ripgrep"], ["curl"],
        ["perl"], ["_1password"], ["gitMinimal", "htop"], [*shell, "python3", "git", "vim"],
    ]  # fmt: skip
    return [
        Workload("demo set (13 images)", pkgs, images, budget),
        Workload("demo set, budget 5 (13 images)", pkgs, images, 5),
    ]


def timing(pkgs: graphs.PackageSet, popularity: Mapping[str, int], budget: int) -> None:
    rng = random.Random(3)
    roots: list[str] = []
    names = sorted(pkgs.packages)
    while len(pkgs.closure(roots)) < 3000:
        roots.append(pkgs.packages[rng.choice(names)])
    closure = pkgs.closure(roots)
    print(f"\nplanning time for one {len(closure)}-path closure (median of 5):")
    for name, plan in ALGORITHMS.items():
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            plan(closure, roots, popularity, budget - 1)
            runs.append(time.perf_counter() - started)
        print(f"  {name:13} {statistics.median(runs) * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--no-demo", action="store_true", help="skip the Nix-built demo set")
    args = parser.parse_args()
    works = synthetic_workloads(args.budget)
    if not args.no_demo:
        works += demo_workloads(args.budget)
    verdicts = []
    for work in works:
        popularity = work.pkgs.popularity()
        print(f"\n{work.name}, budget {work.budget}")
        print(f"  {'algorithm':13} {'downloaded':>12} {'lower bound':>12} {'ratio':>7} "
              f"{'layers/image':>13} {'max':>4}")  # fmt: skip
        results = {}
        for name, plan in ALGORITHMS.items():
            r = results[name] = simulate(work, plan, popularity)
            mean = statistics.mean(r.layers)
            print(f"  {name:13} {r.downloaded / 1e6:9.1f} MB {r.lower / 1e6:9.1f} MB "
                  f"{r.ratio:7.3f} {mean:13.1f} {max(r.layers):4}")  # fmt: skip
        rival = min(results["nixery"].ratio, results["auto-layer"].ratio) - 1
        ours = results["ours"].ratio - 1
        ok = ours <= 0.9 * rival or ours < 1e-9
        verdicts.append(ok)
        share = f"{ours / rival:.2f}x" if rival > 0 else "n/a"
        print(f"  excess over 1: ours {ours:.4f}, best rival {rival:.4f} ({share}): "
              f"{'met' if ok else 'MISSED'}")  # fmt: skip
    timing(works[0].pkgs, works[0].pkgs.popularity(), args.budget)
    print(f"\ntarget (excess <= 0.9x the better rival's) met on {sum(verdicts)}/{len(verdicts)}")


if __name__ == "__main__":
    main()
