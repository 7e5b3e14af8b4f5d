"""Faults injected into Google Cloud mode: a database, a bucket or a queue that stops
answering, and records or blobs that vanish. A client gets a 503 with Retry-After within
seconds, never a 500 or a hang, and an image whose parts vanished is built again.

These tests hang and resume the emulators (SIGSTOP, SIGCONT), so they have their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixery.errors import INTERRUPTIONS, StorageUnavailable
from tests.helpers.emulators import (
    BUCKET,
    PROJECT,
    ContainerBuilderRegistry,
    Emulators,
    GcpRegistry,
    Process,
)
from tests.helpers.registries import OCI, big_set

pytestmark = pytest.mark.e2e

TIMEOUT = 2  # NIXERY_BACKEND_TIMEOUT, seconds
STORAGE_DOWN = INTERRUPTIONS[StorageUnavailable]


@pytest.fixture(scope="module")
def own_emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    emu = Emulators(tmp_path_factory.mktemp("fault-emulators"))
    yield emu
    emu.stop()


@pytest.fixture
def make(own_emulators: Emulators, tmp_path: Path) -> Iterator:
    """Starts registries (function and builder) sharing one Firestore prefix."""
    prefix = f"f{uuid.uuid4().hex[:8]}_"
    started: list[GcpRegistry] = []

    def start(**env: str) -> GcpRegistry:
        reg = GcpRegistry(
            tmp_path / f"r{len(started)}", own_emulators,
            NIXERY_BACKEND_TIMEOUT=str(TIMEOUT), NIXERY_FIRESTORE_PREFIX=prefix, **env,
        )  # fmt: skip
        started.append(reg.start())
        return reg

    yield start
    for reg in started:
        reg.stop()


@contextlib.contextmanager
def hung(process: Process) -> Iterator[None]:
    """The service accepts connections (the kernel does) but never answers."""
    os.killpg(process.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(process.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def stopped_storage(emulators: Emulators) -> Iterator[None]:
    """Cloud Storage refuses connections (its process is gone), then comes back, empty."""
    emulators.gcs.kill(signal.SIGKILL)
    try:
        yield
    finally:
        emulators.restart_gcs()


def assert_quick_503(
    reg: GcpRegistry, path: str, service: str, within: float = 3 * TIMEOUT + 2
) -> None:
    started = time.monotonic()
    answer = reg.get(path, headers={"Accept": OCI}, timeout=120)
    seconds = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert "upload_id" not in answer.text and "http" not in answer.text, answer.text
    assert answer.headers["Retry-After"]
    error = answer.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE" and service in error["message"], error
    assert seconds < within, f"answered after {seconds:.1f}s"


@pytest.mark.parametrize(
    ("which", "service", "path"),
    [
        ("firestore", "Firestore", "/v2/zlib/manifests/latest"),
        ("gcs", "Cloud Storage", f"/v2/zlib/blobs/sha256:{'1' * 64}"),
        ("tasks", "Cloud Tasks", "/v2/expat/manifests/latest"),
    ],
)
def test_a_service_that_stops_answering_is_a_quick_503(make, own_emulators, which, service, path):
    reg = make()
    with hung(getattr(own_emulators, which)):
        assert_quick_503(reg, path, service)
    # Once it answers again, so does the registry.
    if "/manifests/" in path:
        answer = reg.get(path, headers={"Accept": OCI})
        assert answer.status_code == 200, answer.text
    else:
        assert reg.get(path).status_code == 404


@pytest.mark.parametrize("fault", ["frozen", "stopped"])
def test_storage_down_during_a_build_is_a_quick_503_and_the_task_is_retried(
    make, own_emulators, fault
):
    """The builder's uploads give up within the backend timeout; it answers its task 503
    with Retry-After and gives the build back with the cause, so the pull waiting for it
    answers 503 naming Cloud Storage within seconds (it used to wait out the client while
    the builder retried in place). Cloud Tasks delivers the task again (the registry
    enqueued it once), and once storage is back the image is served."""
    check_storage_outage(make(), own_emulators, fault)


def test_storage_down_with_the_builder_image(own_emulators, builder_image, tmp_path):
    """The same with the builder run as deployed: the image's Nix, Python and libraries."""
    reg = ContainerBuilderRegistry(
        tmp_path / "r", own_emulators, builder_image, NIXERY_BACKEND_TIMEOUT=str(TIMEOUT),
        NIXERY_FIRESTORE_PREFIX=f"c{uuid.uuid4().hex[:8]}_",
    ).start()  # fmt: skip
    try:
        check_storage_outage(reg, own_emulators, "stopped")
    finally:
        reg.stop()


def check_storage_outage(reg: GcpRegistry, own_emulators: Emulators, fault: str) -> None:
    path = "/v2/hello/manifests/latest"
    # The first calls to a fresh emulator and on a fresh channel may take the whole backend
    # timeout on a busy machine: made before the clock runs.
    deadline = time.monotonic() + 60
    while reg.get(f"/v2/hello/manifests/sha256:{'0' * 64}").status_code != 404:
        assert time.monotonic() < deadline
    outage = hung(own_emulators.gcs) if fault == "frozen" else stopped_storage(own_emulators)
    with outage:
        # Time for the build before its first upload: a delivery, Nix's evaluation.
        # The cause's fixed phrase, never the library's text (an upload URL grants writes).
        assert_quick_503(reg, path, STORAGE_DOWN, within=10 * TIMEOUT + 10)
        deadline = time.monotonic() + 60
        while reg.builds_started() < 2:  # the queue's retry
            assert time.monotonic() < deadline, reg.builder_log.read_text()[-3000:]
            time.sleep(0.2)
    builder = reg.builder_log.read_text()
    # The passing cause's path (a bug's logs its traceback and answers 500), answered 503:
    # the host's gunicorn logs each answer (the image's does not).
    assert re.search(r"Cloud Storage [^\n]*; to be retried", builder), builder[-3000:]
    assert '"POST / HTTP/1.1" 503' in builder or isinstance(reg, ContainerBuilderRegistry)
    # Storage is back: a 503 says an attempt was given back and no retry claimed it since;
    # once a retry started, it is waited for.
    deadline = time.monotonic() + 90
    started = reg.builds_started()
    while True:
        retried = reg.builds_started() > started
        if (answer := reg.get(path, headers={"Accept": OCI}, timeout=60)).status_code == 200:
            break
        assert answer.status_code == 503 and not retried, answer.text
        assert time.monotonic() < deadline, answer.text
        time.sleep(1)
    assert reg.log_path.read_text().count("enqueued, attempt") == 1
    assert reg.get(f"/v2/hello/blobs/{answer.json()['layers'][0]['digest']}").status_code == 307


def test_a_database_that_stops_answering_mid_wait_is_a_503_well_before_the_wait_ends(
    make, own_emulators
):
    """The request has started the build and waits on its record's listener when Firestore
    hangs: the listener hears nothing and says nothing. Once the builder's heartbeat (a
    third of the lease) plus SLOW_POLL is overdue the registry reads the record, which
    fails within the backend timeout: 503 naming Firestore, long before NIXERY_BUILD_WAIT
    (the deadline below is generous, for a busy machine; it is no measure)."""
    reg = make(NIXERY_BUILD_WAIT="300", NIXERY_LEASE_TTL="9")
    answers: list = []
    thread = threading.Thread(
        target=lambda: answers.append(reg.get("/v2/slow/manifests/latest", timeout=300))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while ": starting " not in reg.builder_log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with hung(own_emulators.firestore):
        thread.join(120)
        assert not thread.is_alive(), "held as long as the build wait"
    assert answers[0].status_code == 503, answers[0].text
    error = answers[0].json()["errors"][0]
    assert error["code"] == "UNAVAILABLE" and "Firestore" in error["message"], error


def test_an_image_whose_manifest_or_blob_vanished_is_built_again(make, own_emulators):
    """A fresh instance (nothing in memory) finds the record published but a part gone: it
    builds the image again rather than answer 500, or a manifest that cannot be pulled."""
    from google.cloud import firestore, storage

    first = make()
    built = first.get("/v2/htop/manifests/latest", headers={"Accept": OCI})
    assert built.status_code == 200
    digest = built.headers["Docker-Content-Digest"]
    layer = built.json()["layers"][0]["digest"]
    env = own_emulators.env()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
            patch.setenv(name, env[name])
        prefix = first.env["NIXERY_FIRESTORE_PREFIX"]
        firestore.Client(project=PROJECT).collection(prefix + "manifests").document(digest).delete()
        storage.Client(project=PROJECT).bucket(BUCKET).blob(f"blobs/sha256/{layer[7:]}").delete()

    second = make()
    again = second.get("/v2/htop/manifests/latest", headers={"Accept": OCI})
    assert again.status_code == 200, again.text
    assert again.headers["Docker-Content-Digest"] == digest, "the same image, rebuilt"
    assert second.get(f"/v2/htop/blobs/{layer}").status_code == 307
    assert "building it again" in second.log_path.read_text()


def test_a_builder_killed_while_uploading_is_taken_over(own_emulators, tmp_path):
    """The builder dies with its layers half uploaded: the staging objects are abandoned (for
    the bucket's lifecycle rule), nothing is published under a digest it does not match, and
    the next builder builds the image whole."""
    from google.cloud import storage

    pkgs = big_set(tmp_path / "pkgs", parts=2, part_mib=100)
    reg = GcpRegistry(
        tmp_path / "r", own_emulators, NIXERY_PKGS_PATH=str(pkgs), NIXERY_LEASE_TTL="3",
        NIX_TIMEOUT="600",
    ).start()  # fmt: skip
    try:
        answers: list = []
        thread = threading.Thread(
            target=lambda: answers.append(
                reg.get("/v2/big/manifests/latest", headers={"Accept": OCI}, timeout=300)
            )
        )
        thread.start()
        deadline = time.monotonic() + 120
        while ": nix done in " not in reg.builder_log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert reg.builder is not None
        reg.builder.kill(signal.SIGKILL)
        reg.start_builder()
        thread.join(300)
        assert answers and answers[0].status_code == 200, answers
        assert reg.builds_started() == 2
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", own_emulators.env()["STORAGE_EMULATOR_HOST"])
            bucket = storage.Client(project=PROJECT).bucket(BUCKET)
            for layer in answers[0].json()["layers"]:
                data = bucket.blob(f"blobs/sha256/{layer['digest'][7:]}").download_as_bytes()
                assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
    finally:
        reg.stop()
