"""The layering algorithms ours is measured against, re-implemented from their descriptions.

They take the same arguments as ``nixery.pipeline.layers.plan_layers`` and return layers the
same way (lists of store paths), so the benchmark can swap them. They are for comparison
only; the product uses ``plan_layers``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from nixery.store_names import store_name

Closure = Mapping[str, Mapping[str, Any]]


def single_layer(
    closure: Closure, roots: Sequence[str], popularity: Mapping[str, int], budget: int
) -> list[list[str]]:
    """The baseline: the whole closure in one layer."""
    return [sorted(closure)]


def _edges(closure: Closure) -> dict[str, list[str]]:
    return {
        p: sorted({r for r in info["references"] if r != p and r in closure})
        for p, info in closure.items()
    }


def _topological(refs: Mapping[str, Sequence[str]]) -> list[str]:
    """Referrers before their references; among ready paths, by path, so the order is total."""
    indegree = dict.fromkeys(refs, 0)
    for targets in refs.values():
        for r in targets:
            indegree[r] += 1
    ready = [p for p, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        p = heapq.heappop(ready)
        order.append(p)
        for r in refs[p]:
            indegree[r] -= 1
            if indegree[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(refs):
        raise ValueError("the closure's references form a cycle")
    return order


def _closure_sizes(closure: Closure, succ: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """closureSize, as `exportReferencesGraph` reports it: narSize summed over the closure."""
    below: dict[str, set[str]] = {}
    for p in reversed(_topological(succ)):
        s = {p}
        for r in succ[p]:
            s |= below[r]
        below[p] = s
    return {p: sum(int(closure[q]["narSize"]) for q in s) for p, s in below.items()}


def nixery(
    closure: Closure, roots: Sequence[str], popularity: Mapping[str, int], budget: int
) -> list[list[str]]:
    """Nixery (Go) 1.x: popularity/dominator grouping (layers.go), without its instability.

    A synthetic root points at the requested paths and at every path that is popular (>= 100
    referring derivations; cacert and iana-etc forced) or big (closureSize > 100 MB); each
    subtree of the dominator tree directly under the root is a layer, rated popularity x
    closureSize of its top path; over the budget, the lowest-rated are merged into one.
    """
    succ = _edges(closure)
    sizes = _closure_sizes(closure, succ)

    def pop(p: str) -> int:
        name = store_name(p)
        if name.startswith(("nss-cacert", "iana-etc")):
            return 10**6
        return popularity.get(name, 1)

    extra = {p for p in closure if pop(p) >= 100 or sizes[p] > 100_000_000}
    graph = {**succ, "": sorted(set(roots) | extra)}
    idom = _dominators(graph)
    groups: dict[str, list[str]] = {}
    for p in closure:
        top = p
        while idom.get(top, "") != "":
            top = idom[top]
        groups.setdefault(top, []).append(p)
    layers = sorted(
        ((pop(top) * sizes[top], top, sorted(ps)) for top, ps in groups.items()),
        key=lambda t: (-t[0], t[1]),
    )
    if len(layers) > budget:
        rest = sorted(p for _, _, ps in layers[budget - 1 :] for p in ps)
        layers = [*layers[: budget - 1], (0, "", rest)]
    return [ps for _, _, ps in layers]


def autolayer(
    closure: Closure, roots: Sequence[str], popularity: Mapping[str, int], budget: int
) -> list[list[str]]:
    """nixpkgs' 2024 auto-layer (dockerTools): the largest paths become layer roots.

    A dependency joins its root's layer unless another root also uses it; the dependencies
    shared by a set of roots form one layer per distinct set; whatever no root reaches (the
    requested packages above the roots) is one more layer. Roots are added, largest narSize
    first, until one more would exceed the budget; layers are ordered by closure size.
    """
    succ = _edges(closure)
    order = _topological(succ)
    by_size = sorted(closure, key=lambda p: (-int(closure[p]["narSize"]), p))

    def layout(chosen: Sequence[str]) -> list[list[str]]:
        bit = {p: 1 << i for i, p in enumerate(chosen)}
        reach = dict.fromkeys(closure, 0)  # bit set of the roots above each path
        for p in order:
            own = reach[p] | bit.get(p, 0)
            for r in succ[p]:
                reach[r] |= own
        groups: dict[tuple[str, int], list[str]] = {}
        for p in closure:
            if p in bit:
                key = ("root", bit[p])
            elif reach[p] & (reach[p] - 1) == 0 and reach[p]:
                key = ("root", reach[p])  # one root uses it: it joins that root's layer
            else:
                key = ("shared", reach[p])
            groups.setdefault(key, []).append(p)
        return [sorted(g) for g in groups.values()]

    best = layout([])
    for n in range(1, len(by_size) + 1):
        candidate = layout(by_size[:n])
        if len(candidate) > budget:
            break
        best = candidate
    csize = _closure_sizes(closure, succ)

    def layer_closure(layer: list[str]) -> int:
        return max(csize[p] for p in layer)

    return sorted(best, key=lambda layer: (layer_closure(layer), layer))


def _dominators(successors: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Immediate dominators from the root "" (Cooper, Harvey & Kennedy's iterative algorithm)."""
    order: list[str] = []  # postorder
    seen = {""}
    stack: list[tuple[str, int]] = [("", 0)]
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
    idom = {"": ""}

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
            if node == "":
                continue
            preds = [p for p in predecessors[node] if p in idom]
            new = preds[0]
            for p in preds[1:]:
                new = intersect(p, new)
            if idom.get(node) != new:
                idom[node] = new
                changed = True
    return idom
