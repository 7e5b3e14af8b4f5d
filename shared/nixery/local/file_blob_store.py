"""Blobs as files in ``STORAGE_PATH``: ``blobs/sha256/<hex>``, written via ``tmp/``.

Needs no extended attributes (the digest is the file name), so any filesystem works. A
writer fills a temporary file beside the blobs and renames it into place on commit, so a
crash leaves at most a temporary file, which the next start removes.

A disk can damage a file after it was written (a full disk, a crash of the machine, a person),
so each blob is hashed again before this process first serves it, or an image that names it,
and whenever its file changes after that: a damaged blob is removed (and so rebuilt), never
served. Hashing on first use rather than at start keeps the start quick however many blobs
there are; it costs one read of each blob per process, at about 1 GB/s.

The disk's refusals, reading as well as writing (full, permission denied, read-only, an I/O
error), are ``StorageUnavailable`` naming the cause. A blob that is missing is unknown, even
when it vanishes between its check and its open (`nixery gc --apply` while serving): that
request is a 404, and the image that names the blob is built again at its next pull.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nixery.blobs import Hasher, blob_path
from nixery.caches import KeyedLocks
from nixery.errors import StorageUnavailable, UnknownBlob, os_cause
from nixery.records import StoredBlob

log = logging.getLogger(__name__)


class FileBlobWriter:
    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        with _Unavailable("write a blob"):
            fd, name = tempfile.mkstemp(dir=store.scratch, suffix=".part")
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = Hasher()

    def write(self, data: bytes | memoryview) -> int:
        assert self._file is not None, "write after commit or cancel"
        self._hash.update(data)
        with _Unavailable("write a blob"):
            return self._file.write(data)

    def commit(self, digest: str) -> None:
        assert self._file is not None, "commit after commit or cancel"
        self._hash.check(digest)
        target = self._store.path(digest)
        # A blob that is intact is this one (blobs are content-addressed): keep it. A damaged
        # one is replaced.
        if not self._store.intact(digest):
            with _Unavailable("write a blob"):
                target.parent.mkdir(parents=True, exist_ok=True)
                # Durable before visible: a published blob survives a crash of the machine.
                self._file.flush()
                os.fsync(self._file.fileno())
                os.replace(self._path, target)
        self.cancel()

    def cancel(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the close's flush too
                self._file.close()
            self._file = None
        self._path.unlink(missing_ok=True)


class _Unavailable:
    """What the disk refuses (full, read-only, not ours, failing) is trouble outside the
    request; the caller handles a missing blob, which is no trouble, before this sees it.
    A class rather than a generator: every blob of every pull passes through it."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        pass

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        if isinstance(error, OSError):
            log.warning("the blob store cannot %s: %s", self.doing, error)
            cause = os_cause(error)
            raise StorageUnavailable(f"the blob store cannot {self.doing}: {cause}") from error


def _identity(path: str) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or written to."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.scratch = root / "tmp"
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._prefix = f"{root}/"  # a blob's path is this and its blob_path: no Path per pull
        # digest -> the identity of the file found intact: checked again once it changes.
        # Read without a lock (see ``nixery.caches`` on single dict operations).
        self._verified: dict[str, tuple[int, int, int, int]] = {}
        self._mutex = threading.Lock()
        self._hashing = KeyedLocks()  # one hash of a blob at a time, however many ask

    def remove_leftovers(self) -> None:
        """Drops the temporary files of writers that a dead process left behind."""
        for leftover in self.scratch.iterdir():
            leftover.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return Path(self._file(digest))

    def _file(self, digest: str) -> str:
        """A blob's path, as a string: what every pull's calls take."""
        return self._prefix + blob_path(digest)

    def writer(self) -> FileBlobWriter:
        return FileBlobWriter(self)

    def size(self, digest: str) -> int | None:
        with _Unavailable("read a blob"):
            try:
                return os.stat(self._file(digest)).st_size
            except FileNotFoundError:
                return None

    def intact(self, digest: str) -> bool:
        with _Unavailable("read a blob"):
            try:
                # A blob found intact before and unchanged since costs a stat and no lock:
                # that is every blob of a cached pull.
                if self._verified.get(digest) == _identity(self._file(digest)):
                    return True
                with self._hashing.hold(digest):
                    return self._intact(digest)
            except FileNotFoundError:  # gone, or removed while it was checked
                with self._mutex:
                    self._verified.pop(digest, None)
                return False

    def _intact(self, digest: str) -> bool:
        path = self.path(digest)
        identity = _identity(str(path))
        with self._mutex:
            if self._verified.get(digest) == identity:
                return True
        with path.open("rb") as f:
            actual = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        if actual != digest:
            log.error("blob %s is damaged (its bytes hash to %s): removed", digest, actual,
                      extra={"digest": digest})  # fmt: skip
            path.unlink(missing_ok=True)
            return False
        with self._mutex:
            self._verified[digest] = identity
        return True

    def url(self, digest: str) -> str | None:
        return None

    def blobs(self) -> Iterator[StoredBlob]:
        for path in (self.root / "blobs" / "sha256").glob("*"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                yield StoredBlob(f"sha256:{path.name}", stat.st_size, stat.st_mtime)

    def delete(self, digest: str) -> None:
        with _Unavailable("delete a blob"):
            self.path(digest).unlink(missing_ok=True)

    def open(self, digest: str) -> BinaryIO:
        with _Unavailable("read a blob"):
            try:
                return open(self._file(digest), "rb")
            except FileNotFoundError:  # removed since its check
                raise UnknownBlob("blob unknown", {"digest": digest}) from None
