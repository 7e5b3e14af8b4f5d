"""Layering benchmark: bytes one client downloads over a sequence of image pulls.

    .venv/bin/python -m bench.layers [--budget 100] [--no-demo] [--smoke]

For each workload (a sequence of image requests over a package set) and each algorithm, one
simulated client pulls the images in order and keeps every layer it has seen; a layer is
downloaded when its exact set of store paths (so its digest) is new to the client. Bytes are
narSize. The lower bound is the bytes of store paths the client has never had; the ratio
downloaded / lower bound is 1 for perfect sharing. Like the builder, the algorithms get the
budget minus one (the image-root layer is added after them and is not counted here).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.lib import package_sets, rival_layering
from bench.lib.harness import command_parser, parse_args
from nixery.pipeline.layers import plan_layers

Planner = Callable[[rival_layering.Closure, Sequence[str], Mapping[str, int], int], list[list[str]]]

ALGORITHMS: dict[str, Planner] = {
    "single layer": rival_layering.single_layer,
    "nixery": rival_layering.nixery,
    "auto-layer": rival_layering.autolayer,
    "ours": plan_layers,
}


@dataclass
class Workload:
    name: str
    pkgs: package_sets.PackageSet
    images: list[list[str]]  # attribute names
    budget: int


@dataclass
class Result:
    downloaded: int = 0
    lower: int = 0
    layers: list[int] = field(default_factory=list)  # per image, the image root included

    @property
    def ratio(self) -> float:
        return self.downloaded / self.lower


def simulate(work: Workload, plan: Planner, popularity: Mapping[str, int]) -> Result:
    seen_layers: set[tuple[str, ...]] = set()
    seen_paths: set[str] = set()
    result = Result()
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


def synthetic_workloads(budget: int, paths: int = 4000, scale: float = 1.0) -> list[Workload]:
    """The synthetic package set of `paths` store paths; `scale` multiplies image counts."""
    pkgs = package_sets.synthetic(paths)
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
    tools, grows, apps, stack, bigs = (max(1, round(n * scale)) for n in (150, 30, 40, 60, 20))
    base = pick(3)
    grow: list[list[str]] = [pick(1)]
    for _ in range(grows - 1):
        grow.append(grow[-1] + pick(1))
    tools_images = [pick(rng.randint(1, 3)) for _ in range(tools)]
    stack_images = [[*base, n] for n in pick(stack)]
    big_images = [rng.sample(big, 6) for _ in range(bigs)]
    spans = [
        len(pkgs.closure([*(pkgs.packages[n] for n in image), *pkgs.always]))
        for image in big_images
    ]
    return [
        Workload(f"tools ({tools} images of 1-3 Zipf-popular packages)", pkgs, tools_images,
                 budget),
        Workload(f"grow (one image, a package added {grows} times)", pkgs, grow, budget),
        Workload(f"apps ({apps} packages with 300+ path closures)", pkgs,
                 [[n] for n in big[:apps]], budget),
        Workload(f"stack (3 fixed packages + 1 varying, {stack} images)", pkgs, stack_images,
                 budget),
        Workload(f"big ({bigs} images of 6 large packages, {min(spans):,}-{max(spans):,} "
                 "paths)", pkgs, big_images, budget),
    ]  # fmt: skip


def demo_workloads(budget: int) -> list[Workload]:
    pkgs = package_sets.demo()
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


def timing(
    pkgs: package_sets.PackageSet,
    popularity: Mapping[str, int],
    budget: int,
    paths: int = 3000,
    repeats: int = 5,
) -> None:
    rng = random.Random(3)
    roots: list[str] = []
    names = sorted(pkgs.packages)
    while len(pkgs.closure(roots)) < paths:
        roots.append(pkgs.packages[rng.choice(names)])
    closure = pkgs.closure(roots)
    print(f"\nplanning time for one {len(closure)}-path closure (median of {repeats}):")
    for name, plan in ALGORITHMS.items():
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            plan(closure, roots, popularity, budget - 1)
            runs.append(time.perf_counter() - started)
        print(f"  {name:13} {statistics.median(runs) * 1000:8.1f} ms")


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--no-demo", action="store_true", help="skip the Nix-built demo set")
    parser.add_argument("--paths", type=int, default=4000, help="synthetic package set's size")
    parser.add_argument("--scale", type=float, default=1.0, help="times the images per workload")
    parser.add_argument("--plan-paths", type=int, default=3000, help="closure planned for timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed plans per algorithm")
    args = parse_args(parser, paths=500, scale=0.1, plan_paths=300, repeats=1)
    works = synthetic_workloads(args.budget, args.paths, args.scale)
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
    timing(works[0].pkgs, works[0].pkgs.popularity(), args.budget, args.plan_paths, args.repeats)
    print(f"\ntarget (excess <= 0.9x the better rival's) met on {sum(verdicts)}/{len(verdicts)}")


if __name__ == "__main__":
    main()
