"""Blob storage: where layers and configs live, addressed by digest.

Modelled on distribution's storage drivers, reduced to what a registry that writes whole,
content-addressed blobs needs. A blob is streamed into a ``BlobWriter`` and becomes visible
under its digest only on ``commit``, which checks the bytes against the digest; ``cancel``,
or a crash, leaves nothing under a final name. A blob that exists is never written again.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Protocol

from .errors import NixeryError


class DigestMismatch(NixeryError):
    """The bytes written do not hash to the digest they were committed under: a bug."""


def blob_path(digest: str) -> str:
    """Where a blob lives below a store's root, the same in every store."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


class BlobWriter(Protocol):
    def write(self, data: bytes | memoryview) -> int: ...

    def commit(self, digest: str) -> None:
        """Publishes the bytes under ``digest``, or drops them if that blob exists already."""
        ...

    def cancel(self) -> None:
        """Drops what was written; harmless after a commit."""
        ...


class BlobStore(Protocol):
    """The blob store interface; local files and Google Cloud Storage implement it."""

    def writer(self) -> BlobWriter: ...

    def size(self, digest: str) -> int | None:
        """The blob's size in bytes, or None when it does not exist."""
        ...

    def intact(self, digest: str) -> bool:
        """Whether the blob is stored whole, its bytes the ones its digest names. A store that
        finds a blob damaged removes it, so that it is rebuilt rather than served."""
        ...

    def url(self, digest: str) -> str | None:
        """A URL to redirect clients to, or None when the registry serves the bytes itself."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes, for stores that serve them through the registry; ``UnknownBlob``
        when it is gone, as it may be since its check (`nixery gc --apply` while serving)."""
        ...


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
