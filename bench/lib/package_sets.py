"""Package sets for the layering benchmark: dependency graphs with their packages by name.

The synthetic package set has the shape of a real distribution: a bootstrap chain every
package ends up on (glibc, gcc's runtime), a few very popular libraries, frameworks that
pull in hundreds of paths, and a long tail of leaf packages; sizes are log-normal with a few
huge paths. Everything is seeded, so every run sees the same graph and the same requests.
"""

from __future__ import annotations

import math
import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from bench.lib.harness import ENV
from nixery.nix.path_info import parse_path_info
from nixery.store_names import store_name
from tests.helpers.registries import DEMO


class PathInfo(TypedDict):
    """A store path's entry in a closure, as plan_layers reads it (`nix path-info --json`)."""

    narSize: int
    references: Sequence[str]


@dataclass
class PackageSet:
    """Every store path of a package set, and the store paths of its packages by name."""

    graph: dict[str, PathInfo]  # store path -> its size and references
    packages: dict[str, str]  # attribute name -> store path
    always: list[str]  # added to every image (cacert, iana-etc)

    def closure(self, roots: Sequence[str]) -> dict[str, PathInfo]:
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            p = stack.pop()
            if p not in seen:
                seen.add(p)
                stack.extend(self.graph[p]["references"])
        return {p: self.graph[p] for p in seen}

    def popularity(self) -> dict[str, int]:
        """Nixery's definition: how many store paths reference each store name."""
        counts: dict[str, int] = {}
        for p, info in self.graph.items():
            for r in set(info["references"]) - {p}:
                counts[store_name(r)] = counts.get(store_name(r), 0) + 1
        return counts


def _path(rng: random.Random, name: str) -> str:
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    return "/nix/store/" + "".join(rng.choice(alphabet) for _ in range(32)) + "-" + name


def synthetic(n: int = 4000, seed: int = 1) -> PackageSet:
    """A seeded package set of `n` store paths, shaped as described above."""
    rng = random.Random(seed)
    graph: dict[str, PathInfo] = {}
    paths: list[str] = []
    urn: list[str] = []  # each path once per unit of weight: preferential attachment

    def add(name: str, size: int, deps: Sequence[str], base: int) -> str:
        p = _path(rng, name)
        graph[p] = {"narSize": size, "references": sorted(set(deps))}
        paths.append(p)
        urn.extend([p] * base)
        urn.extend(sorted(set(deps)))
        return p

    # Bootstrap: everything reaches these.
    libunistring = add("libunistring-1.2", 1_800_000, [], 5)
    libidn2 = add("libidn2-2.3.7", 350_000, [libunistring], 5)
    xgcc = add("xgcc-13.3.0-libgcc", 140_000, [], 5)
    glibc = add("glibc-2.40-36", 30_000_000, [libidn2, xgcc], 400)
    gcclib = add("gcc-13.3.0-lib", 8_000_000, [glibc], 150)
    bash = add("bash-5.2p37", 1_600_000, [glibc], 40)
    # Popular libraries and frameworks: high base weight, fixed sizes.
    core = [
        ("zlib-1.3.1", 250_000, 120),
        ("openssl-3.3.2", 7_000_000, 100),
        ("ncurses-6.4.20221231", 3_000_000, 60),
        ("xz-5.6.3", 1_200_000, 40),
        ("bzip2-1.0.8", 200_000, 30),
        ("libffi-3.4.6", 150_000, 30),
        ("expat-2.6.4", 400_000, 30),
        ("sqlite-3.46.1", 2_500_000, 25),
        ("libxml2-2.13.4", 2_800_000, 25),
        ("python3-3.12.7", 110_000_000, 60),
        ("perl-5.40.0", 60_000_000, 40),
        ("glib-2.82.1", 12_000_000, 50),
        ("systemd-minimal-libs-256.8", 4_000_000, 30),
        ("dbus-1.14.10", 2_000_000, 20),
        ("libX11-1.8.10", 6_000_000, 35),
        ("mesa-24.2.7", 400_000_000, 20),
        ("gtk+3-3.24.43", 45_000_000, 30),
        ("qtbase-5.15.15", 90_000_000, 15),
        ("llvm-18.1.8-lib", 300_000_000, 15),
        ("icu4c-74.2", 35_000_000, 20),
    ]
    pool = [glibc, gcclib, bash]
    for name, size, base in core:
        uses = [glibc, *rng.sample(pool, min(len(pool), rng.randint(0, 4)))]
        pool.append(add(name, size, uses, base))
    for i in range(n - len(paths)):
        k = min(int(rng.expovariate(1 / 5)) + 1, 40)
        if rng.random() < 0.03:
            k = rng.randint(40, 250)  # desktop applications and meta packages
        deps: set[str] = {glibc} if rng.random() < 0.9 else set()
        while len(deps) < min(k, len(paths)):
            # Mostly popular libraries; sometimes any earlier package, which gives depth.
            deps.add(rng.choice(urn) if rng.random() < 0.75 else rng.choice(paths))
        size = int(min(math.exp(rng.gauss(math.log(600_000), 1.7)), 1.5e9))
        words = ["lib", "py", "go", "rs", "hs", "x", "gnome", "kde", "tex"]
        name = f"{rng.choice(words)}{i}-{rng.randint(0, 9)}.{rng.randint(0, 30)}"
        add(name, size, sorted(deps), 1)
    cacert = add("nss-cacert-3.104", 500_000, [], 1)
    iana = add("iana-etc-20240318", 600_000, [], 1)
    packages = {store_name(p): p for p in paths}
    return PackageSet(graph, packages, [cacert, iana])


def demo() -> PackageSet:
    """The demo package set, built with Nix (examples/demo-pkgs)."""
    attrs = [
        "hello", "bashInteractive", "coreutils", "moreutils", "nano", "git", "gitMinimal",
        "python3", "htop", "vim", "jq", "ripgrep", "curl", "perl", "_1password",
        "python3Packages.requests", "python3Packages.numpy", "cacert", "iana-etc",
    ]  # fmt: skip
    cmd = ["nix-build", "--no-out-link", str(DEMO)]
    for a in attrs:
        cmd += ["-A", a]
    outs = subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True)
    roots = outs.stdout.split()
    info = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json",
         "--recursive", *roots],
        env=ENV, check=True, capture_output=True, text=True,
    )  # fmt: skip
    closure = parse_path_info(info.stdout)
    graph = {
        p.path: PathInfo(narSize=p.nar_size, references=p.references) for p in closure.values()
    }
    packages = dict(zip(attrs, roots, strict=True))
    always = [packages.pop("cacert"), packages.pop("iana-etc")]
    return PackageSet(graph, packages, always)
