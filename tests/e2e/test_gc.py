"""Garbage collection: one suite over both modes' stores (SQLite and files; Firestore and GCS
against the emulators), then `nixery gc` on a serving local registry."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nixery.blobs import store_bytes
from nixery.errors import BuildFailed
from nixery.local.file_blob_store import FileBlobStore
from nixery.oci.manifests import (
    LayerBlob,
    canonical_json,
    image_index,
    image_manifests,
    sha256_digest,
)
from nixery.records import BuildReport, Failure, Published
from nixery.request import AMD64, ARM64
from nixery.service.gc import KEEP_NAME_LISTS, collect
from tests.helpers.registries import NIXERY, OCI
from tests.helpers.stores import firestore_ports, sqlite_ports

DAY = 86400.0


@dataclass
class GcStores:
    state: Any
    blobs: Any


def _local(tmp_path: Path) -> GcStores:
    return GcStores(sqlite_ports(tmp_path / "state.sqlite3"), FileBlobStore(tmp_path / "storage"))


def _gcp(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> GcStores:
    from google.cloud import storage

    from nixery.gcp.gcs_blob_store import GcsBlobStore

    emulators = request.getfixturevalue("emulators")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{emulators.gcs_port}")
    bucket = storage.Client(project="nixery-test").create_bucket(f"gc-{uuid.uuid4().hex}")
    client = request.getfixturevalue("firestore_client")
    state = firestore_ports(client, f"gc{uuid.uuid4().hex[:8]}_")
    return GcStores(state, GcsBlobStore(bucket, signer=None, url_ttl=60))


@pytest.fixture(params=["local", pytest.param("gcp", marks=pytest.mark.e2e)])
def stores(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> GcStores:
    if request.param == "local":
        return _local(tmp_path)
    return _gcp(request, tmp_path, monkeypatch)


def image(stores: GcStores, key: str, *layers: bytes) -> list[str]:
    """Publishes an image of these layers (stored first, as a build does); its blob digests."""
    blobs = []
    for data in layers:
        store_bytes(stores.blobs, sha256_digest(data), data)
        blobs.append(LayerBlob(sha256_digest(data), sha256_digest(data), len(data)))
        stores.state.record_layer(f"layer-{sha256_digest(data)}", blobs[-1])
    config = canonical_json({"image": key})
    store_bytes(stores.blobs, sha256_digest(config), config)
    stores.state.publish(key, image_manifests(config, blobs))
    return [sha256_digest(config), *(b.digest for b in blobs)]


def report(key: str) -> BuildReport:
    return BuildReport(key, ("hello",), "x86_64-linux", "test@0", time.time(), "published", "")


def test_what_no_recent_image_uses_is_collected_and_the_rest_kept(stores: GcStores) -> None:
    now = time.time()
    shared, own_a, own_b, orphan = b"shared layer", b"layer of a", b"layer of b", b"orphan"
    a = image(stores, "a", shared, own_a)
    b = image(stores, "b", shared, own_b)
    store_bytes(stores.blobs, sha256_digest(orphan), orphan)
    later = now + 40 * DAY
    stores.state.record_failure("old-failure", Failure.of(BuildFailed("x"), later - 2 * DAY))
    stores.state.record_failure("new-failure", Failure.of(BuildFailed("y"), later))
    stores.state.touch("a", later - DAY)  # pulled yesterday; b not since it was built
    for key in ("a", "b", "old-failure", "new-failure"):
        stores.state.record_report(report(key))

    def run(apply: bool):
        return collect(stores.state, stores.blobs, max_age=30 * DAY, grace=DAY,
                       failure_ttl=DAY, now=later, apply=apply)  # fmt: skip

    planned = run(apply=False)
    assert planned.images == ["b"] and planned.kept_images == 1
    assert planned.failures == ["old-failure"]
    gone = {blob.digest for blob in planned.blobs}
    assert gone == {b[0], sha256_digest(own_b), sha256_digest(orphan)}
    assert planned.layers == [f"layer-{sha256_digest(own_b)}"]
    assert len(planned.manifests) == 2, "both formats of b"
    assert all(stores.blobs.size(d) is not None for d in gone), "a dry run deletes nothing"
    assert isinstance(stores.state.status("b"), Published)

    run(apply=True)
    assert stores.state.status("b") is None
    assert all(stores.blobs.size(d) is None for d in gone)
    status = stores.state.status("a")
    assert isinstance(status, Published)
    for digest in status.manifests.values():
        manifest = stores.state.manifest(digest)
        assert manifest is not None and all(stores.blobs.intact(d) for d in manifest.blobs())
    assert set(a) <= {blob.digest for blob in stores.blobs.blobs()}
    assert stores.state.status("new-failure") is not None
    assert run(apply=False).blobs == [], "nothing left to collect"
    reported = {r.key for r in stores.state.recent_reports(10)}
    assert reported == {"a", "new-failure"}, "a collected image's or failure's page goes too"


def test_an_index_keeps_every_platforms_manifests_and_blobs(stores: GcStores) -> None:
    """A multi-platform image's record names the default platform's manifests and the
    indexes; the other platforms' are reached through the indexes only."""
    platforms = []
    for arch, data in ((AMD64, b"amd64 layer"), (ARM64, b"arm64 layer")):
        store_bytes(stores.blobs, sha256_digest(data), data)
        config = canonical_json({"architecture": arch.oci_arch})
        store_bytes(stores.blobs, sha256_digest(config), config)
        layer = LayerBlob(sha256_digest(data), sha256_digest(data), len(data))
        platforms.append((arch, image_manifests(config, [layer])))
    stores.state.publish(
        "multi", [m for _, ms in reversed(platforms) for m in ms] + image_index(platforms)
    )
    arm64 = [d for m in platforms[1][1] for d in (m.digest, *m.blobs())]
    report = collect(stores.state, stores.blobs, max_age=30 * DAY, grace=0, failure_ttl=DAY,
                     now=time.time(), apply=True)  # fmt: skip
    assert report.blobs == [] and report.manifests == []
    assert all(stores.state.manifest(d) or stores.blobs.intact(d) for d in arm64)


def test_only_the_newest_package_name_lists_are_kept(stores: GcStores) -> None:
    """The search box's names, stored once per revision (a few hundred KB each with
    nixpkgs), would otherwise grow by one list per revision of a moving channel."""
    revisions = [f"channel:nixos-unstable:{i}" for i in range(KEEP_NAME_LISTS + 2)]
    for revision in revisions:
        stores.state.record_package_names(revision, ["hello", revision])
    stores.state.record_package_names(revisions[0], ["hello"])  # stored again: newest now
    report = collect(stores.state, stores.blobs, max_age=30 * DAY, grace=0, failure_ttl=DAY,
                     now=time.time(), apply=True)  # fmt: skip
    assert sorted(report.name_lists) == revisions[1:3]
    kept = [r for r in revisions if stores.state.package_names(r) is not None]
    assert kept == [revisions[0], *revisions[3:]]


def test_blobs_younger_than_the_grace_are_kept_for_the_builds_under_way(tmp_path) -> None:
    """A build writes its blobs before it publishes: they belong to no image yet."""
    stores = _local(tmp_path)
    data = b"written by a build under way"
    store_bytes(stores.blobs, sha256_digest(data), data)
    report = collect(stores.state, stores.blobs, max_age=0, grace=3600, failure_ttl=0,
                     now=time.time(), apply=True)  # fmt: skip
    assert report.blobs == [] and stores.blobs.size(sha256_digest(data)) == len(data)


def gc(reg, *args: str) -> str:
    done = subprocess.run([str(NIXERY), "gc", *args], env=reg.env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stderr + done.stdout


def test_nixery_gc_on_a_serving_registry(make_registry, clients, tmp_path) -> None:
    reg = make_registry(tmp_path / "storage")
    assert reg.get("/v2/shell/hello/manifests/latest", headers={"Accept": OCI}).ok
    assert reg.get("/v2/jq/manifests/latest", headers={"Accept": OCI}).ok
    blobs = list((reg.storage / "blobs" / "sha256").iterdir())
    day_ago = time.time() - DAY
    for blob in blobs:
        os.utime(blob, (day_ago, day_ago))

    assert "would collect 0 images (kept 2)" in gc(reg)
    report = gc(reg, "--max-age", "0")
    assert "would collect 2 images (kept 0)" in report
    assert sorted((reg.storage / "blobs" / "sha256").iterdir()) == sorted(blobs), "a dry run"
    assert "collected 2 images" in gc(reg, "--max-age", "0", "--apply")
    assert list((reg.storage / "blobs" / "sha256").iterdir()) == []

    copied = clients.copy(reg.host, "shell/hello", tmp_path / "img")
    assert copied.returncode == 0, copied.stderr + reg.log()
    assert reg.builds_started() == 3, "collected, then built again on demand"


def test_nixery_gc_in_google_cloud_mode(gcp_registry) -> None:
    """The same command, on Firestore and GCS, as the deployment's scheduled job runs it."""
    assert gcp_registry.get("/v2/hello/manifests/latest", headers={"Accept": OCI}).ok
    env = {**gcp_registry.env, "NIXERY_STORAGE_BACKEND": "gcs"}
    done = subprocess.run([str(NIXERY), "gc"], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert "would collect 0 images (kept " in done.stderr, done.stderr
