"""The BlobStore contract: one suite, run against every store (as distribution runs one
storage driver suite against every driver): local files, Google Cloud Storage (against
fake-gcs-server, hence the e2e mark) and the unit tests' in-memory fake.

Each store comes with a way to look behind it: the blobs it holds, what unfinished writers
left (temporary files, staging objects, buffers), and an identity of a stored blob that
changes if the blob is ever written over.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import requests

from nixery.blobs import DigestMismatch, blob_path, store_bytes
from nixery.errors import StorageUnavailable, UnknownBlob
from nixery.gcp import gcs_blob_store
from nixery.local.file_blob_store import FileBlobStore
from nixery.oci.manifests import sha256_digest
from nixery.ports import BlobStore
from tests.helpers.disk_faults import fill, forbidden, small_disk
from tests.helpers.emulators import PROJECT, service_account_key
from tests.helpers.fakes import MemoryBlobStore, all_at_once

SMALL_CHUNK = 256 << 10  # UPLOAD_CHUNK under test: the smallest a resumable upload takes
SIZES = {"small": 10_000, "large": 4 * SMALL_CHUNK + 12_345}  # large: staged on GCS


@dataclass
class Store:
    blobs: BlobStore
    stored: Callable[[], list[str]]  # the names of every blob held
    leftovers: Callable[[], list[object]]  # what unfinished writers left behind
    identity: Callable[[str], object]  # of one stored blob, changed by a write over it
    remove: Callable[[str], None]  # a blob, behind the store's back (as `nixery gc` does)
    redirects: bool = False  # whether clients fetch blobs from URLs rather than the registry


def _files(tmp_path: Path) -> Store:
    store = FileBlobStore(tmp_path / "storage")
    blobs_dir = store.root / "blobs"
    return Store(
        store,
        lambda: sorted(
            p.relative_to(store.root).as_posix() for p in blobs_dir.rglob("*") if p.is_file()
        ),
        lambda: sorted(store.scratch.iterdir()),
        lambda digest: (store.path(digest).stat().st_ino, store.path(digest).stat().st_mtime_ns),
        lambda digest: store.path(digest).unlink(),
    )


def _gcs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from google.cloud import storage
    from google.oauth2 import service_account

    endpoint = f"http://127.0.0.1:{request.getfixturevalue('emulators').gcs_port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setattr(gcs_blob_store, "UPLOAD_CHUNK", SMALL_CHUNK)
    bucket = storage.Client(project=PROJECT).create_bucket(f"blobs-{uuid.uuid4().hex}")
    service_account_key(tmp_path / "key.json")
    signer = service_account.Credentials.from_service_account_file(tmp_path / "key.json")
    store = gcs_blob_store.GcsBlobStore(
        bucket, signer=signer, url_ttl=300, public_endpoint=endpoint
    )
    return Store(
        store,
        lambda: sorted(
            b.name for b in bucket.list_blobs() if not b.name.startswith(gcs_blob_store.STAGING)
        ),
        lambda: sorted(b.name for b in bucket.list_blobs(prefix=gcs_blob_store.STAGING)),
        lambda digest: bucket.get_blob(blob_path(digest)).generation,
        lambda digest: bucket.delete_blob(blob_path(digest)),
        redirects=True,
    )


def _memory() -> Store:
    store = MemoryBlobStore()
    return Store(
        store,
        lambda: sorted(blob_path(digest) for digest in store.blobs),
        lambda: list(store.staged),
        lambda digest: id(store.blobs[digest]),
        lambda digest: store.blobs.pop(digest) and None,
    )


@pytest.fixture(params=["files", pytest.param("gcs", marks=pytest.mark.e2e), "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Store:
    if request.param == "files":
        return _files(tmp_path)
    if request.param == "gcs":
        return _gcs(request, tmp_path, monkeypatch)
    return _memory()


def random_blob(size: int) -> tuple[bytes, str]:
    """Random bytes (so that no two tests share a blob) and their digest."""
    data = os.urandom(size)
    return data, sha256_digest(data)


@pytest.fixture(params=list(SIZES))
def blob(request: pytest.FixtureRequest) -> tuple[bytes, str]:
    return random_blob(SIZES[request.param])


def stream(store: Store, data: bytes, step: int = 4096):
    """A writer given ``data`` in many small writes, not yet committed."""
    writer = store.blobs.writer()
    for i in range(0, len(data), step):
        assert writer.write(memoryview(data)[i : i + step]) == len(data[i : i + step])
    return writer


def read(store: Store, digest: str) -> bytes:
    with store.blobs.open(digest) as f:
        return f.read()


def assert_holds_only(store: Store, data: bytes, digest: str) -> None:
    """The store holds this one blob, whole, and nothing any writer left unfinished."""
    assert store.blobs.size(digest) == len(data)
    assert read(store, digest) == data
    assert store.stored() == [blob_path(digest)]
    assert store.leftovers() == []


def assert_holds_nothing(store: Store) -> None:
    assert store.stored() == []
    assert store.leftovers() == []


def test_a_streamed_blob_is_visible_under_its_digest_once_committed(store: Store, blob) -> None:
    data, digest = blob
    writer = stream(store, data)
    assert store.blobs.size(digest) is None
    writer.commit(digest)
    writer.cancel()  # harmless after a commit, as every caller does it in a finally
    assert_holds_only(store, data, digest)


def test_a_commit_under_the_wrong_digest_raises_and_publishes_nothing(store: Store, blob):
    data, digest = blob
    wrong = sha256_digest(data + b"!")
    writer = stream(store, data)
    with pytest.raises(DigestMismatch):
        writer.commit(wrong)
    writer.cancel()
    assert store.blobs.size(wrong) is None
    assert store.blobs.size(digest) is None
    assert_holds_nothing(store)


def test_cancel_publishes_nothing_and_leaves_nothing_behind(store: Store, blob) -> None:
    data, digest = blob
    writer = stream(store, data)
    writer.cancel()
    writer.cancel()
    assert store.blobs.size(digest) is None
    assert_holds_nothing(store)


def test_a_missing_digest_has_no_size(store: Store) -> None:
    assert store.blobs.size("sha256:" + "0" * 64) is None


def test_a_stored_blob_is_intact_and_a_missing_one_is_not(store: Store, blob) -> None:
    data, digest = blob
    assert not store.blobs.intact(digest)
    stream(store, data).commit(digest)
    assert store.blobs.intact(digest) and store.blobs.intact(digest)
    assert_holds_only(store, data, digest)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "emptied"])
def test_a_damaged_file_is_found_removed_and_replaced_by_a_rebuild(tmp_path: Path, damage: str):
    """A disk may damage a blob after it was written: it is hashed before it is first served,
    in each process and whenever its file changed; a damaged one is removed, never served,
    and the next commit of its digest stores good bytes again."""
    data, digest = random_blob(SIZES["large"])
    store = FileBlobStore(tmp_path / "storage")
    store_bytes(store, digest, data)
    assert store.intact(digest)
    path = store.path(digest)
    damaged = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:1000] + bytes([data[1000] ^ 1]) + data[1001:],  # the same size
        "emptied": b"",
    }[damage]
    path.write_bytes(damaged)
    assert not store.intact(digest)
    assert not path.exists() and store.size(digest) is None

    path.write_bytes(damaged)
    store_bytes(store, digest, data)  # a rebuild: the damaged file is not kept
    assert path.read_bytes() == data
    fresh = FileBlobStore(tmp_path / "storage")  # another process hashes it again
    assert fresh.intact(digest)


def test_a_blob_removed_after_its_check_is_unknown_where_it_is_fetched(store: Store) -> None:
    """`nixery gc --apply` may delete a blob between a request's check and its read: the
    read says the blob is unknown (a 404), never fails otherwise (a 500)."""
    data, digest = random_blob(1000)
    store_bytes(store.blobs, digest, data)
    assert store.blobs.intact(digest)
    url = store.blobs.url(digest)
    store.remove(digest)
    if store.redirects:
        assert url is not None
        assert requests.get(url, timeout=30).status_code == 404
        return
    with pytest.raises(UnknownBlob):
        store.blobs.open(digest)
    assert not store.blobs.intact(digest)
    assert store.blobs.size(digest) is None


def test_a_write_to_a_full_disk_names_it_leaves_nothing_and_works_once_there_is_room(
    tmp_path: Path,
) -> None:
    data, digest = random_blob(SIZES["small"])
    with small_disk(tmp_path / "disk") as disk:
        store = FileBlobStore(disk / "storage")
        filler = fill(disk)
        with pytest.raises(StorageUnavailable) as raised:
            store_bytes(store, digest, data)
        assert raised.value.message == "the blob store cannot write a blob: the disk is full"
        assert list(store.scratch.iterdir()) == []
        assert store.size(digest) is None
        filler.unlink()
        store_bytes(store, digest, data)
        assert store.intact(digest)


def test_a_store_the_server_may_not_use_says_permission_denied_reading_and_writing(
    tmp_path: Path,
) -> None:
    data, digest = random_blob(1000)
    store = FileBlobStore(tmp_path / "storage")
    store_bytes(store, digest, data)
    assert store.intact(digest)  # and so remembered as checked: it is looked at again
    reads = [store.size, store.intact, store.open]
    with forbidden(tmp_path):
        for read_it in reads:
            with pytest.raises(StorageUnavailable) as raised:
                read_it(digest)
            assert raised.value.message == "the blob store cannot read a blob: permission denied"
        with pytest.raises(StorageUnavailable) as raised:
            store.writer()
        assert raised.value.message == "the blob store cannot write a blob: permission denied"
    assert store.intact(digest)


def test_a_store_whose_directory_is_gone_says_a_file_is_missing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "storage")
    shutil.rmtree(store.scratch)
    with pytest.raises(StorageUnavailable) as raised:
        store.writer()
    assert raised.value.message == (
        "the blob store cannot write a blob: a file or directory is missing"
    )


def test_committing_an_existing_blob_keeps_the_first(store: Store, blob) -> None:
    data, digest = blob
    stream(store, data).commit(digest)
    first = store.identity(digest)
    again = stream(store, data)
    again.commit(digest)
    again.cancel()
    assert store.identity(digest) == first
    assert_holds_only(store, data, digest)


def test_concurrent_writers_of_one_digest_both_succeed_with_one_blob(store: Store, blob):
    data, digest = blob
    writers = [stream(store, data) for _ in range(2)]
    assert all_at_once([partial(writer.commit, digest) for writer in writers]) == []
    for writer in writers:
        writer.cancel()
    assert_holds_only(store, data, digest)


def test_store_bytes_stores_once_and_checks_the_digest(store: Store) -> None:
    data, digest = random_blob(1000)
    store_bytes(store.blobs, digest, data)
    first = store.identity(digest)
    store_bytes(store.blobs, digest, data)
    assert store.identity(digest) == first
    with pytest.raises(DigestMismatch):
        store_bytes(store.blobs, "sha256:" + "1" * 64, data)
    assert_holds_only(store, data, digest)


def test_a_url_serves_the_blob_where_the_store_redirects(store: Store) -> None:
    data, digest = random_blob(1000)
    store_bytes(store.blobs, digest, data)
    url = store.blobs.url(digest)
    if not store.redirects:
        assert url is None
        return
    assert url is not None
    assert requests.get(url, timeout=30).content == data


@pytest.fixture
def gcs_store(request, tmp_path, monkeypatch) -> Store:
    return _gcs(request, tmp_path, monkeypatch)


@pytest.mark.e2e
def test_gcs_stages_a_blob_larger_than_one_upload_chunk(gcs_store: Store, monkeypatch) -> None:
    """A large blob goes through a staging object (seen here by the copy that publishes it),
    which is gone once the blob is."""
    from google.cloud.storage import Blob

    staged: list[str] = []
    rewrite = Blob.rewrite

    def spy(self, source, **kwargs):
        staged.append(source.name)
        return rewrite(self, source, **kwargs)

    monkeypatch.setattr(Blob, "rewrite", spy)
    data, digest = random_blob(SIZES["large"])
    stream(gcs_store, data).commit(digest)
    assert staged and all(name.startswith(gcs_blob_store.STAGING) for name in staged)
    assert_holds_only(gcs_store, data, digest)


@pytest.mark.e2e
@pytest.mark.parametrize("size", list(SIZES))
def test_gcs_blobs_are_stored_as_immutable_for_caches(gcs_store: Store, size: str) -> None:
    """Both paths, the single request (small) and the staging copy (large), leave the blob
    with a year-long, immutable Cache-Control, as read back from the emulator."""
    data, digest = random_blob(SIZES[size])
    stream(gcs_store, data).commit(digest)
    assert isinstance(gcs_store.blobs, gcs_blob_store.GcsBlobStore)
    stored = gcs_store.blobs.bucket.get_blob(blob_path(digest))
    assert stored is not None
    assert stored.cache_control == "public, max-age=31536000, immutable"
    assert stored.content_type == "application/octet-stream"
    assert_holds_only(gcs_store, data, digest)
