"""Nix: both JSON shapes of `nix path-info`, its error messages, and real builds."""

import json
import subprocess

import pytest
from conftest import DEMO, NIX_CONFIG, REPO

from nixery.nix import Nix, UnknownPackages, _error_message, parse_path_info

A = "/nix/store/" + "a" * 32 + "-a-1.0"
B = "/nix/store/" + "b" * 32 + "-b-1.0"


def test_path_info_list_shape_of_nix_2_8():
    text = json.dumps(
        [
            {"path": A, "narHash": "sha256:x", "narSize": 10, "references": [A, B]},
            {"path": B, "narHash": "sha256:y", "narSize": 20, "references": []},
        ]
    )
    closure = parse_path_info(text)
    assert closure[A].references == (B,), "self-references are dropped"
    assert closure[B].nar_size == 20


def test_path_info_object_shape_of_nix_2_19():
    text = json.dumps(
        {
            A: {"narHash": "sha256-x", "narSize": 10, "references": [B]},
            B: {"narHash": "sha256-y", "narSize": 20, "references": []},
        }
    )
    closure = parse_path_info(text)
    assert set(closure) == {A, B}
    assert closure[A].references == (B,)


def test_error_message_takes_the_error_line():
    lines = [
        "building '/nix/store/x-broken-1.0.drv'...",
        "error: broken is broken on purpose",
        "\x1b[31;1merror:\x1b[0m builder for '/nix/store/x-broken-1.0.drv' failed with exit code 1",
    ]
    assert _error_message(lines).startswith("broken is broken on purpose")


def test_outputs_are_gc_roots_while_the_image_is_made(monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", timeout=60)

    def roots(path: str) -> str:
        return subprocess.run(
            ["nix-store", "--query", "--roots", path], capture_output=True, text=True, check=True
        ).stdout

    with nix.build(DEMO, ["hello"], "x86_64-linux") as result:
        hello = result.outputs["hello"]
        assert "nixery-roots-" in roots(hello)
        assert any(p.endswith("-glibc-2.37-8") for p in result.closure)
    assert "nixery-roots-" not in roots(hello)


def test_unknown_packages_are_reported_together(monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", timeout=60)
    with (
        pytest.raises(UnknownPackages) as raised,
        nix.build(DEMO, ["hello", "nope-a", "nope-b"], "x86_64-linux"),
    ):
        pass
    assert raised.value.names == ["nope-a", "nope-b"]
