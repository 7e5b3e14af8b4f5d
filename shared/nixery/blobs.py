"""Blob storage: where layers and configs live, addressed by digest.

Modelled on distribution's storage drivers, reduced to what a registry that writes whole,
content-addressed blobs needs. A blob is streamed into a ``BlobWriter`` and becomes visible
under its digest only on ``commit``, which checks the bytes against the digest; ``cancel``,
or a crash, leaves nothing under a final name. A blob that exists is never written again.
"""

from __future__ import annotations

import hashlib

from nixery.errors import NixeryError
from nixery.ports import BlobStore


class DigestMismatch(NixeryError):
    """The bytes written do not hash to the digest they were committed under: a bug."""


def blob_path(digest: str) -> str:
    """Where a blob lives below a store's root, the same in every store."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


class Hasher:
    """The digest of what a writer was given, to check it on commit."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._sha256.update(data)
        self.size += len(data)

    def check(self, digest: str) -> None:
        actual = "sha256:" + self._sha256.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"blob committed as {digest} hashes to {actual}")


def store_bytes(blobs: BlobStore, digest: str, data: bytes) -> None:
    """Stores a small blob held in memory (a config); one that exists is kept, by commit."""
    writer = blobs.writer()
    try:
        writer.write(data)
        writer.commit(digest)
    finally:
        writer.cancel()
