"""Layers: group a closure into at most ``budget`` layers so that images share them.

This is Nixery's popularity/dominator grouping with its defects fixed: every order is total
(ties broken by store path), sizes are narSize (not closureSize, which counts shared
dependencies many times over), and nothing depends on hash-map iteration order, so the same
closure gives the same layers on any machine.

A store path's layer is its subtree in the dominator tree of the closure graph seen from a
synthetic root that points at the requested packages, and at every popular or big path so
those get layers of their own, shared across images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Nixery's thresholds: a store name referenced by this many derivations is "popular"...
POPULAR = 100
# ...and a path this large gets its own layer whatever its popularity.
BIG = 100 * 1024 * 1024

_ROOT = ""


def store_name(path: str) -> str:
    """``/nix/store/<hash>-glibc-2.40`` -> ``glibc-2.40``: the key of popularity data."""
    base = path.rsplit("/", 1)[-1]
    return base.split("-", 1)[1] if "-" in base else base


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

    def pop(path: str) -> int:
        return popularity.get(store_name(path), 1)

    successors: dict[str, list[str]] = {
        path: sorted({r for r in info["references"] if r != path and r in closure})
        for path, info in closure.items()
    }
    extra = [p for p in closure if pop(p) >= POPULAR or closure[p]["narSize"] >= BIG]
    successors[_ROOT] = sorted(set(roots) | set(extra))
    unreached = set(closure) - _reachable(successors)
    # Anything not reachable from a root is still in the closure: hang it off the root too.
    successors[_ROOT] = sorted(set(successors[_ROOT]) | unreached)

    idom = _dominators(successors)
    groups: dict[str, list[str]] = {}
    for path in closure:
        top = path
        while idom[top] != _ROOT:
            top = idom[top]
        groups.setdefault(top, []).append(path)

    def size(paths: list[str]) -> int:
        return sum(int(closure[p]["narSize"]) for p in paths)

    # (rating, top path, paths): ratings tie often, the top path makes the order total.
    rated = sorted(
        ((pop(top) * size(paths), top, sorted(paths)) for top, paths in groups.items()),
        key=lambda item: (-item[0], item[1]),
    )
    if len(rated) > budget:
        keep, merge = rated[: budget - 1], rated[budget - 1 :]
        merged = sorted(p for _, _, paths in merge for p in paths)
        rated = [*keep, (0, merged[0], merged)]
    return [paths for _, _, paths in rated]


def _reachable(successors: Mapping[str, Sequence[str]]) -> set[str]:
    seen = {_ROOT}
    stack = [_ROOT]
    while stack:
        for nxt in successors[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _dominators(successors: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Immediate dominators (Cooper, Harvey & Kennedy's iterative algorithm)."""
    order: list[str] = []  # postorder
    seen = {_ROOT}
    stack: list[tuple[str, int]] = [(_ROOT, 0)]
    while stack:
        node, i = stack.pop()
        succ = successors[node]
        if i < len(succ):
            stack.append((node, i + 1))
            if succ[i] not in seen:
                seen.add(succ[i])
                stack.append((succ[i], 0))
        else:
            order.append(node)
    index = {node: i for i, node in enumerate(order)}
    predecessors: dict[str, list[str]] = {node: [] for node in order}
    for node in order:
        for nxt in successors[node]:
            predecessors[nxt].append(node)

    idom = {_ROOT: _ROOT}

    def intersect(a: str, b: str) -> str:
        while a != b:
            while index[a] < index[b]:
                a = idom[a]
            while index[b] < index[a]:
                b = idom[b]
        return a

    changed = True
    while changed:
        changed = False
        for node in reversed(order):
            if node == _ROOT:
                continue
            preds = [p for p in predecessors[node] if p in idom]
            new = preds[0]
            for p in preds[1:]:
                new = intersect(p, new)
            if idom.get(node) != new:
                idom[node] = new
                changed = True
    return idom
