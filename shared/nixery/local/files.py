"""Blobs as files in ``STORAGE_PATH``: ``blobs/sha256/<hex>``, written via ``tmp/``.

Needs no extended attributes (the digest is the file name), so any filesystem works.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.scratch = root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / algorithm / hexdigest

    def size(self, digest: str) -> int | None:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def put_file(self, digest: str, path: Path) -> None:
        target = self._path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            path.unlink()
            return
        # Durable before visible: a published blob survives a crash of the machine too.
        with path.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(path, target)

    def put_bytes(self, digest: str, data: bytes) -> None:
        if self.size(digest) is not None:
            return
        fd, tmp = tempfile.mkstemp(dir=self.scratch, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.put_file(digest, Path(tmp))

    def url(self, digest: str) -> str | None:
        return None

    def open(self, digest: str) -> BinaryIO:
        return self._path(digest).open("rb")
