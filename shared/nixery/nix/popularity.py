"""Popularity data: how many store paths refer to each store name, for layering.

Nixery's format: a JSON object mapping a store name without its hash (``glibc-2.40``) to a
count. Without data, every path is equally unpopular and layering still works, less well.

Counting (``nixery popcount``) is Nixery's definition too (its popcount tool reads the same
counts from a binary cache's narinfo files): for every package of the set, the runtime
closure is taken, and each store path in it adds one to the count of every store name it
references. Layering uses exact counts only to find popularity 1 and otherwise weighs them
by their logarithm (``pipeline.layers``), so counting the closures of the set's packages,
rather than every derivation, is enough.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from nixery.nix.path_info import StorePath, parse_path_info
from nixery.nix.runner import NIX_COMMAND
from nixery.store_names import store_name

log = logging.getLogger(__name__)


def load_popularity(location: str | None, timeout: float = 30.0) -> dict[str, int]:
    """Reads ``NIX_POPULARITY_URL`` (an http(s) URL or a path); ``{}`` if absent or unusable."""
    if not location:
        log.warning("no popularity data (NIX_POPULARITY_URL unset): layering uses sizes only")
        return {}
    try:
        if location.startswith(("http://", "https://")):
            with urllib.request.urlopen(location, timeout=timeout) as response:
                data = json.load(response)
        else:
            data = json.loads(Path(location).read_text())
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise ValueError("it must map store names to counts")
    except (OSError, ValueError) as e:
        # A registry without popularity data still serves correct images: do not refuse to start.
        log.warning("popularity data unusable (%s: %s): layering uses sizes only", location, e)
        return {}
    log.info("loaded popularity data for %d store names from %s", len(data), location)
    return data


# Every derivation at the top level of the set and one level down (python3Packages.*);
# attributes that throw are skipped.
_PACKAGES = """
pkgsPath:
let
  pkgs = import pkgsPath { };
  ok = v: (builtins.tryEval v).success;
  isDrv = v: ok v && builtins.isAttrs v && (v.type or null) == "derivation" && ok v.drvPath;
  drvsIn = set: builtins.filter (v: v != null) (map (n:
    let v = set.${n}; in if isDrv v then v.drvPath else null) (builtins.attrNames set));
  nested = builtins.concatMap (n:
    let v = pkgs.${n}; in
    if ok v && builtins.isAttrs v && !(isDrv v) && (ok (builtins.attrNames v))
    then drvsIn v else [ ]) (builtins.attrNames pkgs);
in drvsIn pkgs ++ nested
"""


def count(closure: Mapping[str, StorePath]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in sorted(closure):
        for ref in closure[path].references:
            name = store_name(ref)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def popcount(pkgs_path: Path, timeout: int = 600, store: str | None = None) -> dict[str, int]:
    """Counts references in the closures of every package of the set.

    With ``store`` (a binary cache such as ``https://cache.nixos.org``), the references come
    from its narinfo files and nothing is built or downloaded, as Nixery's popcount does: the
    only practical way for nixpkgs. Without it, the packages are built here. Either way a
    package that is not in the cache or fails to build within ``timeout`` seconds is left out,
    with a warning: a package set always has a few, and partial counts are still useful.
    """
    expression = f"({_PACKAGES}) {json.dumps(str(pkgs_path.resolve()))}"
    drvs = sorted(set(json.loads(_run(["nix-instantiate", "--eval", "--strict", "--json",
                                       "--read-write-mode", "--expr", expression]))))  # fmt: skip
    log.info("popcount: %d derivations in %s", len(drvs), pkgs_path)
    where = ["--store", store] if store else []
    if store is None:
        built = subprocess.run(
            ["nix-store", "--realise", "--keep-going", "--timeout", str(timeout), *drvs],
            capture_output=True, text=True,
        )  # fmt: skip
        if built.returncode != 0:
            log.warning("popcount: some packages failed to build and are not counted")
    outputs = sorted(set(_run(["nix-store", "--query", "--outputs", *drvs]).split()))
    invalid = set(
        _run(["nix-store", *where, "--check-validity", "--print-invalid", *outputs]).split()
    )
    if store and invalid:
        log.warning("popcount: %d outputs are not in %s and are not counted", len(invalid), store)
    outputs = [p for p in outputs if p not in invalid]
    closure = parse_path_info(
        _run(["nix", *NIX_COMMAND, "path-info", *where, "--json", "--recursive", *outputs])
    )
    log.info("popcount: %d store paths in their closure", len(closure))
    return count(closure)


def _run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{result.stderr[-4000:]}")
    return result.stdout
