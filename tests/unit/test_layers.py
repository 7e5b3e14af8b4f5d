import random

import pytest

from nixery.pipeline.layers import plan_layers
from nixery.store_names import store_name


def path(name):
    return f"/nix/store/{'0' * 32}-{name}"


def graph(spec):
    """spec: name -> (narSize, [dependency names])"""
    return {
        path(n): {"narSize": s, "references": [path(d) for d in deps]}
        for n, (s, deps) in spec.items()
    }


SPEC = {
    "glibc-2.40": (30_000_000, []),
    "zlib-1.3": (200_000, ["glibc-2.40"]),
    "openssl-3.0": (6_000_000, ["glibc-2.40"]),
    "curl-8.0": (1_000_000, ["openssl-3.0", "zlib-1.3", "glibc-2.40"]),
    "git-2.45": (50_000_000, ["curl-8.0", "zlib-1.3"]),
    "htop-3.3": (400_000, ["ncurses-6.4", "glibc-2.40"]),
    "ncurses-6.4": (3_000_000, ["glibc-2.40"]),
    "hello-2.12": (100_000, ["glibc-2.40"]),
}


def test_covers_closure_exactly_once_and_is_sorted():
    closure = graph(SPEC)
    layers = plan_layers(closure, [path("git-2.45"), path("htop-3.3")], {}, 10)
    flat = [p for layer in layers for p in layer]
    assert sorted(flat) == sorted(closure)
    assert all(layer == sorted(layer) for layer in layers)


def test_shared_dependencies_get_their_own_layers():
    closure = graph(SPEC)
    layers = plan_layers(closure, [path("git-2.45"), path("htop-3.3")], {}, 10)
    glibc_layer = next(layer for layer in layers if path("glibc-2.40") in layer)
    assert glibc_layer == [path("glibc-2.40")]


def test_popular_paths_are_separate():
    closure = graph(SPEC)
    layers = plan_layers(closure, [path("git-2.45")], {"zlib-1.3": 500}, 10)
    assert [path("zlib-1.3")] in layers


def test_budget_is_respected():
    closure = graph(SPEC)
    for budget in (1, 2, 3):
        layers = plan_layers(closure, [path("git-2.45"), path("htop-3.3")], {}, budget)
        assert len(layers) <= budget
        assert sorted(p for layer in layers for p in layer) == sorted(closure)


def test_deterministic_whatever_the_input_order():
    closure = graph(SPEC)
    expected = plan_layers(closure, [path("git-2.45"), path("htop-3.3")], {"glibc-2.40": 3}, 4)
    items = list(closure.items())
    for seed in range(20):
        random.Random(seed).shuffle(items)
        shuffled = {
            p: {"narSize": i["narSize"], "references": list(reversed(i["references"]))}
            for p, i in items
        }
        roots = [path("htop-3.3"), path("git-2.45")]
        assert plan_layers(shuffled, roots, {"glibc-2.40": 3}, 4) == expected


def test_store_name():
    assert store_name(path("glibc-2.40")) == "glibc-2.40"


def test_rejects_empty_budget():
    with pytest.raises(ValueError):
        plan_layers(graph(SPEC), [path("hello-2.12")], {}, 0)


def test_over_budget_the_biggest_paths_get_their_own_layers():
    closure = graph(SPEC)
    layers = plan_layers(closure, [path("git-2.45"), path("htop-3.3")], {}, 3)
    assert [path("git-2.45")] in layers and [path("glibc-2.40")] in layers
    rest = next(layer for layer in layers if len(layer) > 1)
    assert len(rest) == len(closure) - 2


def test_free_riders_join_their_only_referrer():
    closure = graph(SPEC)
    popularity = {"ncurses-6.4": 1, "glibc-2.40": 50}
    layers = plan_layers(closure, [path("git-2.45"), path("htop-3.3")], popularity, 5)
    assert sorted([path("htop-3.3"), path("ncurses-6.4")]) in layers


def test_order_is_intrinsic_so_images_share_a_prefix():
    popularity = {"glibc-2.40": 500, "zlib-1.3": 200, "openssl-3.0": 100}
    a = plan_layers(graph(SPEC), [path("git-2.45")], popularity, 10)
    b = plan_layers(graph(SPEC), [path("curl-8.0"), path("hello-2.12")], popularity, 10)
    assert a[:3] == b[:3] == [[path("glibc-2.40")], [path("zlib-1.3")], [path("openssl-3.0")]]


def test_units_that_fit_the_budget_are_layers_with_no_empty_rest():
    closure = graph(SPEC)
    popularity = {store_name(p): 1 for p in closure} | {"glibc-2.40": 9}
    layers = plan_layers(closure, [path("git-2.45"), path("htop-3.3")], popularity, 6)
    assert all(layers) and len(layers) <= 6
    assert sorted(p for layer in layers for p in layer) == sorted(closure)
