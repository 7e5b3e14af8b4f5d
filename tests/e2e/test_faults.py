"""Faults injected into local mode: damaged blobs, a full disk, a server killed mid-build,
a state database locked, read-only or failing, a blob store the server may not read, blobs
deleted while they are served.

Each ends with a correct image or a clear error within seconds (a 503 naming the cause, or
a 404 for a blob that is gone), never a 500, and no damaged blob or manifest is ever served:
the pulls of the server processes here are by skopeo, which checks every digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from nixery.config import local_settings
from nixery.errors import DISK_FULL
from nixery.local import app as local_mode
from nixery.local.file_blob_store import FileBlobStore
from nixery.local.sqlite_state import SqliteDatabase
from nixery.service.catalog import RESTARTED
from tests.helpers import disk_faults
from tests.helpers.protocol import DOCKER
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, NIX_CONFIG, OCI, Registry, big_set

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
    if not restart:
        # Its manifest is answered from memory, which reads no blob (docs/security.md): the
        # damage is found by the blobs' own GETs, 404s, and the next pull builds it again.
        assert copied.returncode != 0 and "404" in copied.stderr, copied.stderr + reg.log()
        copied = clients.copy(reg.host, "shell/hello", tmp_path / "again")
    assert copied.returncode == 0, copied.stderr + reg.log()
    assert all_intact(reg.storage)
    assert "is damaged" in reg.log() and "building it again" in reg.log()
    assert hashlib.sha256(flipped.read_bytes()).hexdigest() == flipped.name
    assert hashlib.sha256(truncated.read_bytes()).hexdigest() == truncated.name


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem of its own: too small for `shell/hello`'s layers."""
    with disk_faults.small_disk(tmp_path / "disk", "1m") as disk:
        yield disk


def test_a_full_disk_is_a_503_and_leaves_nothing_damaged(make_registry, clients, small_disk):
    reg = make_registry(small_disk / "storage")
    started = time.monotonic()
    full = manifest(reg, "shell/hello")
    assert full.status_code == 503, full.text
    assert time.monotonic() - started < 30
    assert full.headers["Retry-After"]
    assert "the disk is full" in full.json()["errors"][0]["message"]
    assert all_intact(reg.storage), "no partial blob under a final name"
    assert list((reg.storage / "tmp").iterdir()) == [], "no leftover of the failed writes"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    copied = clients.copy(reg.host, "shell/hello", small_disk / "img")
    assert copied.returncode == 0, copied.stderr + reg.log()
    assert all_intact(reg.storage)


def test_a_build_stopped_by_a_full_disk_says_so_and_that_it_is_retried(make_registry, small_disk):
    """Its page and /api/v1 say what happened and that the next pull builds it again,
    never "building" for ever; the next pull, with room, publishes it."""
    reg = make_registry(small_disk / "storage")
    assert manifest(reg, "shell/hello").status_code == 503
    (build,) = reg.get("/api/v1/registry").json()["builds"]
    assert build["status"] == "interrupted", build
    assert build["failure"] == DISK_FULL and "next pull" in build["retry"]
    report = reg.get(f"/api/v1/builds/{build['key']}").json()
    assert report["status"] == "interrupted" and report["failure"] == DISK_FULL
    assert str(reg.storage) not in report["failure"], "a fixed phrase, not the error's details"
    page = reg.get(f"/builds/{build['key']}").text
    assert "Interrupted" in page and DISK_FULL in page and "builds it again" in page
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert manifest(reg, "shell/hello").status_code == 200
    assert reg.get(f"/api/v1/builds/{build['key']}").json()["status"] == "published"


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
    # Its report said "building" when the server died: the next one knows no thread runs it.
    (slow,) = [b for b in again.get("/api/v1/registry").json()["builds"] if b["name"] == "slow"]
    assert slow["status"] == "interrupted", slow
    assert slow["failure"] == RESTARTED and "next pull" in slow["retry"]
    assert again.get(f"/api/v1/builds/{slow['key']}").json()["status"] == "interrupted"
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
    # Found by its own GET: the manifest answered from memory until then reads no blob.
    assert reg.get(f"/v2/htop/blobs/{layer}").status_code == 404
    assert manifest(reg, "htop").headers["Docker-Content-Digest"] == subject
    assert "building it again" in reg.log()
    assert reg.get(f"/v2/htop/blobs/{layer}").content == content


# --- The backends' faults, through the HTTP layer ----------------------------------------
# Local mode in this process, on real files, SQLite and Nix, behind Flask's test client:
# each fault of a backend answers 503 with Retry-After and a message naming its cause.

LOCK_WAIT = 0.2  # seconds the database waits here for another process's lock


@pytest.fixture
def local_app(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], FlaskClient]:
    """Starts local mode on a storage directory, as `nixery serve` would."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    monkeypatch.setattr(
        local_mode, "SqliteDatabase", partial(SqliteDatabase, busy_timeout=LOCK_WAIT)
    )

    def start(storage: Path) -> FlaskClient:
        env = {"STORAGE_PATH": str(storage), "NIXERY_PKGS_PATH": str(DEMO),
               "NIXERY_EVAL_ALLOW": DEMO_EVAL_ALLOW, "NIX_TIMEOUT": "10"}  # fmt: skip
        return local_mode.create_local_app(local_settings(env)).test_client()

    return start


def pull(app: FlaskClient, name: str = "shell/hello") -> TestResponse:
    return app.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})


def assert_unavailable(answer: TestResponse, cause: str) -> None:
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.headers["Retry-After"]
    error = answer.json["errors"][0]
    assert error["code"] == "UNAVAILABLE" and cause in error["message"], error


@contextlib.contextmanager
def database_fault(kind: str, storage: Path, start: Callable[[Path], FlaskClient]):
    """A server restarted on ``storage`` whose state database has the fault ``kind``."""
    database = storage / "state.sqlite3"
    if kind == "locked":
        with disk_faults.locked(database):
            yield start(storage)
    elif kind == "read-only":
        with disk_faults.read_only(database):
            yield start(storage)
    elif kind == "full disk":
        app = start(storage)
        disk_faults.fill(storage.parent)
        yield app
    else:
        app = start(storage)
        disk_faults.fail_reads_and_writes(database)
        yield app


@pytest.mark.parametrize(
    ("kind", "cached", "cause"),
    [
        ("locked", 200, "the state database is locked by another process"),
        ("read-only", 200, "the state database is read-only"),
        ("full disk", 200, "the disk is full"),
        ("failing disk", 503, "the state database cannot be read or written: an I/O error"),
    ],
)
def test_a_fault_of_the_state_database_is_a_503_naming_it_and_what_it_can_read_is_served(
    local_app, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, cached: int, cause: str
) -> None:
    """A built image is served as long as the database can be read (its use goes unrecorded,
    said in the log); a new build, which must write, says why it cannot."""
    with disk_faults.small_disk(tmp_path / "disk", "64m") as disk:
        storage = disk / "storage"
        assert pull(local_app(storage)).status_code == 200
        with database_fault(kind, storage, local_app) as app:
            if cached == 200:
                assert pull(app).status_code == 200
            else:
                assert_unavailable(pull(app), cause)
            assert_unavailable(pull(app, "htop"), cause)
    if kind != "failing disk":
        assert "is not recorded: " in caplog.text


def test_a_blob_store_the_server_may_not_read_is_a_503_naming_it(local_app, tmp_path) -> None:
    app = local_app(tmp_path / "storage")
    layer = pull(app).json["layers"][0]["digest"]
    with disk_faults.forbidden(tmp_path):
        assert_unavailable(app.get(f"/v2/shell/hello/blobs/{layer}"), "permission denied")
        # A manifest found whole before is answered from memory, which reads no blob; in
        # another format it is checked, blob by blob.
        assert pull(app).status_code == 200
        docker = app.get("/v2/shell/hello/manifests/latest", headers={"Accept": DOCKER})
        assert_unavailable(docker, "the blob store cannot read a blob: permission denied")
    assert app.get(f"/v2/shell/hello/blobs/{layer}").status_code == 200


def largest_layer(app: FlaskClient, storage: Path) -> tuple[str, Path]:
    layer = max(pull(app).json["layers"], key=lambda layer: layer["size"])["digest"]
    return layer, storage / "blobs" / "sha256" / layer.removeprefix("sha256:")


def test_a_blob_removed_between_its_check_and_its_read_is_a_404_and_its_image_is_rebuilt(
    local_app, tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As `nixery gc --apply` may do while the registry serves: the blob is unknown for that
    request, and the next pull of the image builds it again, whole."""
    app = local_app(tmp_path / "storage")
    layer, path = largest_layer(app, tmp_path / "storage")
    content = path.read_bytes()
    check = FileBlobStore.intact

    def check_then_collect(store: FileBlobStore, digest: str) -> bool:
        intact = check(store, digest)
        store.delete(digest)
        return intact

    with monkeypatch.context() as collecting:
        collecting.setattr(FileBlobStore, "intact", check_then_collect)
        gone = app.get(f"/v2/shell/hello/blobs/{layer}")
    assert gone.status_code == 404, gone.get_data(as_text=True)
    assert gone.json["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert pull(app).status_code == 200
    assert "building it again" in caplog.text
    assert app.get(f"/v2/shell/hello/blobs/{layer}").get_data() == content


def test_a_blob_deleted_at_any_moment_of_its_request_is_never_a_500(local_app, tmp_path):
    """Deleted at a random moment of a request (while the blob is checked, hashed, opened or
    sent), then stored again, a hundred times: each answer is the whole blob or a 404."""
    app = local_app(tmp_path / "storage")
    layer, path = largest_layer(app, tmp_path / "storage")
    content = path.read_bytes()

    def renew() -> None:
        """The blob stored again: a new file, hashed again before it is served."""
        again = path.with_suffix(".again")
        again.write_bytes(content)
        again.replace(path)

    renew()
    started = time.monotonic()
    assert app.get(f"/v2/shell/hello/blobs/{layer}").get_data() == content
    request_time = time.monotonic() - started  # the span the deletions fall in
    moments = random.Random(19)
    statuses: set[int] = set()
    for _ in range(100):
        renew()
        delay = moments.uniform(0, request_time)
        collector = threading.Timer(delay, path.unlink, kwargs={"missing_ok": True})
        collector.start()
        answer = app.get(f"/v2/shell/hello/blobs/{layer}")
        collector.join()
        statuses.add(answer.status_code)
        assert answer.status_code in (200, 404), answer.get_data(as_text=True)
        if answer.status_code == 200:
            assert answer.get_data() == content
    assert statuses == {200, 404}, "the deletions fell both before and after the checks"
