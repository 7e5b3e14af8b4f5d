"""Layers: group a closure into at most ``budget`` layers so that images share them.

A client downloads a layer when it has never seen that layer's digest, that is its exact set
of store paths. So the question for each layer is not "what belongs together in this image"
but "will this exact set of paths turn up again". A single store path is the only set that
surely does; any group depends on the image. Hence (docs/layering.md has the measurements):

1. If the closure fits the budget, every store path is a layer: perfect sharing.
2. Otherwise, units: a path that only one derivation of the package set refers to
   (popularity 1) travels with its referrer, so it joins the referrer's unit at almost no
   cost (it is lost only when requested on its own). Without popularity data, no merging.
3. The budget - 1 units rated highest by narSize x log2(2 + popularity) get a layer
   each, and everything else shares the last layer. That last layer is specific to the
   image and is downloaded again whenever the image differs, so it should hold the bytes
   least likely to be seen again: small, unpopular paths. Finer groupings of the rest
   (Nixery's dominator subtrees, auto-layer's "one layer per set of roots using them")
   cost single-path layers and measured worse.
4. Layers are ordered by intrinsic keys (most popular first, then by path), never by
   anything image-specific, so images that share their base share a prefix of layers.

Every order is total (ties broken by store path), so the same input
gives the same layers on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nixery.store_names import store_name


def plan_layers(
    closure: Mapping[str, Mapping[str, Any]],
    roots: Sequence[str],
    popularity: Mapping[str, int],
    budget: int,
) -> list[list[str]]:
    """Returns the layers in order, each a sorted list of store paths, covering the closure."""
    if budget < 1:
        raise ValueError("the layer budget must be at least 1")
    if not closure:
        return []
    pop = {p: popularity.get(store_name(p)) for p in closure}
    if len(closure) <= budget:
        return _ordered([[p] for p in closure], pop)

    # Free riders (popularity 1: only their referrer uses them) join the referrer's unit.
    referrers: dict[str, list[str]] = {p: [] for p in closure}
    for p, info in closure.items():
        for r in set(info["references"]):
            if r != p and r in closure:
                referrers[r].append(p)
    requested = set(roots)

    def head(p: str) -> str:
        seen = {p}
        while pop[p] == 1 and p not in requested and len(referrers[p]) == 1:
            p = referrers[p][0]
            if p in seen:
                break  # a reference cycle: stop anywhere, deterministically
            seen.add(p)
        return p

    units: dict[str, list[str]] = {}
    for p in sorted(closure):
        units.setdefault(head(p), []).append(p)
    if len(units) <= budget:
        return _ordered(list(units.values()), pop)

    # The best-rated units get a layer each; everything else shares the last one.
    def rating(u: str) -> float:
        return sum(int(closure[p]["narSize"]) for p in units[u]) * math.log2(2 + (pop[u] or 0))

    ranked = sorted(units, key=lambda u: (-rating(u), u))
    rest = [p for u in ranked[budget - 1 :] for p in units[u]]
    return _ordered([*(units[u] for u in ranked[: budget - 1]), rest], pop)


def _ordered(layers: list[list[str]], pop: Mapping[str, int | None]) -> list[list[str]]:
    """Most popular layers first (the base of every image), then by content."""
    sorted_layers = [sorted(layer) for layer in layers]
    return sorted(sorted_layers, key=lambda layer: (-max(pop[p] or 0 for p in layer), layer))
