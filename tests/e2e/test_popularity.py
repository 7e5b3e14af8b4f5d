import json
import logging
import subprocess

from nixery.cli import main
from nixery.nix.path_info import StorePath
from nixery.nix.popularity import count, load_popularity
from tests.helpers.registries import DEMO, NIX_CONFIG


def sp(name, *refs):
    def path(n):
        return f"/nix/store/{'0' * 32}-{n}"

    return StorePath(path(name), tuple(path(r) for r in refs), 1, "")


def test_counts_referrers_per_store_name():
    paths = [sp("glibc-2.40"), sp("zlib-1.3", "glibc-2.40"), sp("curl-8", "zlib-1.3", "glibc-2.40")]
    assert count({p.path: p for p in paths}) == {"glibc-2.40": 2, "zlib-1.3": 1}


def test_popcount_command_on_the_demo_set(tmp_path, monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    out = tmp_path / "popularity.json"
    assert main(["popcount", str(DEMO), "--timeout", "2", "-o", str(out)]) == 0
    counts = json.loads(out.read_text())
    assert counts["glibc-2.37-8"] > counts["readline-8.2p1"] == 1
    assert load_popularity(str(out)) == counts


def test_popcount_reads_references_from_a_binary_cache_without_building(tmp_path, monkeypatch):
    """A local file:// binary cache stands in for cache.nixos.org (unreachable here)."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    hello = subprocess.run(
        ["nix-store", "--realise", *_instantiate("hello")], capture_output=True, text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    cache = f"file://{tmp_path}/cache"
    subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "copy", "--to", cache, *hello],
        check=True, capture_output=True,
    )  # fmt: skip
    out = tmp_path / "cached.json"
    assert main(["popcount", str(DEMO), "--store", cache, "-o", str(out)]) == 0
    counts = json.loads(out.read_text())
    # Only hello's closure is in the cache: hello refers to glibc and busybox, glibc to busybox.
    assert counts == {"busybox-1.35.0": 2, "glibc-2.37-8": 1}


def _instantiate(attr):
    return subprocess.run(
        ["nix-instantiate", str(DEMO), "-A", attr], capture_output=True, text=True, check=True
    ).stdout.split()


def test_missing_or_bad_data_degrades_with_a_warning(tmp_path, caplog):
    bad = tmp_path / "bad.json"
    bad.write_text('{"glibc": "many"}')
    with caplog.at_level(logging.WARNING):
        assert load_popularity(None) == {}
        assert load_popularity(str(tmp_path / "missing.json")) == {}
        assert load_popularity(str(bad)) == {}
        assert load_popularity("http://127.0.0.1:9/popularity.json", timeout=2) == {}
    assert len(caplog.records) == 4
