"""The file blob store's warm path: a blob verified once is not hashed, nor waited for, again."""

from __future__ import annotations

import threading
from pathlib import Path

from nixery.blobs import store_bytes
from nixery.local.file_blob_store import FileBlobStore
from nixery.oci.manifests import sha256_digest

DATA = b"a layer" * 1000
DIGEST = sha256_digest(DATA)


def test_a_verified_blob_is_found_intact_while_another_request_hashes_it(tmp_path: Path):
    store = FileBlobStore(tmp_path)
    store_bytes(store, DIGEST, DATA)
    assert store.intact(DIGEST)
    answered = threading.Event()
    with store._hashing.hold(DIGEST):  # as a request hashing it would
        threading.Thread(target=lambda: store.intact(DIGEST) and answered.set()).start()
        assert answered.wait(5), "the check waited for the other request's hash"


def test_a_verified_blob_changed_since_is_hashed_again_and_removed_if_damaged(tmp_path: Path):
    store = FileBlobStore(tmp_path)
    store_bytes(store, DIGEST, DATA)
    assert store.intact(DIGEST)
    store.path(DIGEST).write_bytes(b"damaged")
    assert not store.intact(DIGEST)
    assert not store.path(DIGEST).exists()
