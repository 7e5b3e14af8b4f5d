"""Blob storage: where layers and configs live, addressed by digest.

Modelled on the reference registry's storage drivers, reduced to what a pull-only registry
that writes whole blobs needs. A blob is written to a scratch file first and published under
its digest in one step, so a crash never leaves a half-written blob under a final name.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Protocol


class BlobStore(Protocol):
    """The blob store interface; local files and Google Cloud Storage implement it."""

    scratch: Path
    """A local directory for blobs being written (on the same filesystem when it matters)."""

    def size(self, digest: str) -> int | None:
        """The blob's size in bytes, or None when it does not exist."""

    def put_file(self, digest: str, path: Path) -> None:
        """Publishes a finished scratch file under its digest; the file is consumed.

        Putting a blob that exists already is a no-op: blobs are immutable.
        """

    def put_bytes(self, digest: str, data: bytes) -> None:
        """Publishes a small blob (a config) held in memory."""

    def url(self, digest: str) -> str | None:
        """A URL to redirect clients to, or None when the registry serves the bytes itself."""

    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes, for stores that serve them through the registry."""
