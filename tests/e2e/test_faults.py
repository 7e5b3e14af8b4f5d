"""Faults injected into local mode: damaged blobs, a full disk, a server killed mid-build.

Each ends with a correct image or a clear error within seconds, and no damaged blob or
manifest is ever served: every pull here is by skopeo, which checks every digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.registries import OCI, Registry, big_set

pytestmark = pytest.mark.e2e


def manifest(reg: Registry, name: str):
    return reg.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})


def layer_files(reg: Registry, name: str) -> list[Path]:
    """The files of the image's layers, largest first."""
    layers = manifest(reg, name).json()["layers"]
    paths = [reg.storage / "blobs" / "sha256" / layer["digest"][7:] for layer in layers]
    return sorted(paths, key=lambda p: p.stat().st_size, reverse=True)


def all_intact(storage: Path) -> bool:
    """Every blob under its final name is whole (there may be none yet)."""
    return all(
        hashlib.sha256(p.read_bytes()).hexdigest() == p.name
        for p in (storage / "blobs").glob("sha256/*")
    )


@pytest.mark.parametrize("restart", [False, True], ids=["while-serving", "after-restart"])
def test_damaged_blobs_are_never_served_and_are_rebuilt(make_registry, clients, tmp_path, restart):
    reg = make_registry(tmp_path / "storage")
    assert manifest(reg, "shell/hello").status_code == 200
    truncated, flipped = layer_files(reg, "shell/hello")[:2]
    if restart:
        reg.stop()
    data = flipped.read_bytes()
    flipped.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])  # the same size
    truncated.write_bytes(truncated.read_bytes()[:1000])
    if restart:
        reg = make_registry(tmp_path / "storage")

    copied = clients.copy(reg.host, "shell/hello", tmp_path / "img")
    assert copied.returncode == 0, copied.stderr + reg.log()
    assert all_intact(reg.storage)
    assert "is damaged" in reg.log() and "building it again" in reg.log()
    assert hashlib.sha256(flipped.read_bytes()).hexdigest() == flipped.name
    assert hashlib.sha256(truncated.read_bytes()).hexdigest() == truncated.name


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem of its own: too small for `shell/hello`'s layers."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_full_disk_is_a_503_and_leaves_nothing_damaged(make_registry, clients, small_disk):
    reg = make_registry(small_disk / "storage")
    started = time.monotonic()
    full = manifest(reg, "shell/hello")
    assert full.status_code == 503, full.text
    assert time.monotonic() - started < 30
    assert full.headers["Retry-After"]
    assert "No space left on device" in full.json()["errors"][0]["message"]
    assert all_intact(reg.storage), "no partial blob under a final name"
    assert list((reg.storage / "tmp").iterdir()) == [], "no leftover of the failed writes"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    copied = clients.copy(reg.host, "shell/hello", small_disk / "img")
    assert copied.returncode == 0, copied.stderr + reg.log()
    assert all_intact(reg.storage)


def processes(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_nix_dies_with_the_server_and_the_next_server_builds(make_registry, tmp_path, sig):
    reg = make_registry(tmp_path / "storage", NIX_TIMEOUT="600")

    def request_slow() -> None:
        with contextlib.suppress(requests.ConnectionError):  # the server dies under it
            manifest(reg, "slow")

    threading.Thread(target=request_slow, daemon=True).start()
    deadline = time.monotonic() + 60
    while "slow: sleeping" not in reg.log():
        assert time.monotonic() < deadline, reg.log()
        time.sleep(0.2)
    assert processes("nix-store --realise") and processes("sleep 600")

    assert reg.proc is not None
    reg.proc.send_signal(sig)
    reg.proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while processes("nix-store --realise") or processes("sleep 600"):
        assert time.monotonic() < deadline, "Nix or its builder outlived the server"
        time.sleep(0.2)

    again = make_registry(tmp_path / "storage")
    assert manifest(again, "shell/hello").status_code == 200
    assert all_intact(again.storage)


@pytest.mark.parametrize(
    "step", ["nix done", "archives done"], ids=["while-archiving", "before-publishing"]
)
def test_a_server_killed_mid_build_leaves_nothing_half_published(
    make_registry, clients, tmp_path, step
):
    """Killed while its layers are written (200 MB of random bytes take a second or two), or
    once they are and before the image is published (a window of milliseconds, so that case
    may land after publication: either way the next server serves a whole image)."""
    pkgs = big_set(tmp_path / "pkgs", parts=2, part_mib=100)
    reg = make_registry(tmp_path / "storage", NIXERY_PKGS_PATH=str(pkgs))

    def request_big() -> None:
        with contextlib.suppress(requests.ConnectionError):  # the server dies under it
            manifest(reg, "big")

    threading.Thread(target=request_big, daemon=True).start()
    deadline = time.monotonic() + 120
    while f": {step} in " not in reg.log():
        assert time.monotonic() < deadline, reg.log()
        time.sleep(0.01)
    assert reg.proc is not None
    reg.proc.kill()
    reg.proc.wait(timeout=30)
    assert all_intact(reg.storage), "no partial blob under a final name"

    again = make_registry(tmp_path / "storage", NIXERY_PKGS_PATH=str(pkgs))
    copied = clients.copy(again.host, "big", tmp_path / "img")
    assert copied.returncode == 0, copied.stderr + again.log()
    assert all_intact(again.storage)


def test_an_image_whose_sbom_was_lost_is_built_again(make_registry, tmp_path):
    """An image is served whole: with every blob its SBOM names too."""
    reg = make_registry(tmp_path / "storage")
    subject = manifest(reg, "htop").headers["Docker-Content-Digest"]
    (sbom,) = reg.get(f"/v2/htop/referrers/{subject}").json()["manifests"]
    layer = reg.get(f"/v2/htop/manifests/{sbom['digest']}").json()["layers"][0]["digest"]
    blob = reg.storage / "blobs" / "sha256" / layer.removeprefix("sha256:")
    content = blob.read_bytes()
    blob.write_bytes(content[:-1] + b" ")
    assert manifest(reg, "htop").headers["Docker-Content-Digest"] == subject
    assert "building it again" in reg.log()
    assert reg.get(f"/v2/htop/blobs/{layer}").content == content
