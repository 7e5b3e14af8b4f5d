"""Blobs as files in ``STORAGE_PATH``: ``blobs/sha256/<hex>``, written via ``tmp/``.

Needs no extended attributes (the digest is the file name), so any filesystem works. A
writer fills a temporary file beside the blobs and renames it into place on commit, so a
crash leaves at most a temporary file, which the next start removes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..storage import Hasher, blob_path


class FileBlobWriter:
    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.scratch, suffix=".part")
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = Hasher()

    def write(self, data: bytes | memoryview) -> int:
        assert self._file is not None, "write after commit or cancel"
        self._hash.update(data)
        return self._file.write(data)

    def commit(self, digest: str) -> None:
        assert self._file is not None, "commit after commit or cancel"
        self._hash.check(digest)
        target = self._store.path(digest)
        # A blob of the right size is this one (blobs are content-addressed): keep it.
        # One of another size is damaged, and is replaced.
        if self._store.size(digest) != self._hash.size:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Durable before visible: a published blob survives a crash of the machine too.
            self._file.flush()
            os.fsync(self._file.fileno())
            os.replace(self._path, target)
        self.cancel()

    def cancel(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._path.unlink(missing_ok=True)


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.scratch = root / "tmp"
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)

    def remove_leftovers(self) -> None:
        """Drops the temporary files of writers that a dead process left behind."""
        for leftover in self.scratch.iterdir():
            leftover.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / blob_path(digest)

    def writer(self) -> FileBlobWriter:
        return FileBlobWriter(self)

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def url(self, digest: str) -> str | None:
        return None

    def open(self, digest: str) -> BinaryIO:
        return self.path(digest).open("rb")
