"""Exports: a published image written to one file, for runtimes that load rather than pull.

``nixery build`` serves no registry: it builds an image through the same pipeline and
writes what a registry would serve for its name, byte for byte (the same manifest, config and
layer blobs, so the same digests), as an OCI image layout archive or as a docker-archive
(``docker save``'s format). Both load with ``podman load`` and ``docker load``. The archives
are reproducible: entries in a fixed order, with fixed times and owners.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import stat
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from nixery.errors import BadOutput, os_cause
from nixery.oci.manifests import Manifest, canonical_json

FORMATS = ("oci", "docker-archive")
# The annotation an OCI layout names an image by, and skopeo's and podman's reading of it.
REF_NAME = "org.opencontainers.image.ref.name"


def _add(tar: tarfile.TarFile, name: str, data: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    tar.addfile(info, data)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _add(tar, name, io.BytesIO(data), len(data))


def _directory(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def write_archive(
    out: BinaryIO,
    kind: str,
    manifest: Manifest,
    reference: str,
    open_blob: Callable[[str], BinaryIO],
    blob_size: Callable[[str], int],
    children: Sequence[Manifest] = (),
) -> None:
    """Writes the image of ``manifest`` to ``out`` as ``kind`` (one of ``FORMATS``), named
    ``reference`` (``NAME:TAG``). ``open_blob`` and ``blob_size`` read the blob store. An
    OCI archive may hold an index, whose manifests are ``children``: a runtime that loads
    it takes its own platform's image."""
    if kind not in FORMATS or (kind != "oci" and children):
        raise ValueError(f"unknown archive format {kind!r}: one of {', '.join(FORMATS)}")
    blobs = list(dict.fromkeys(d for m in (children or [manifest]) for d in m.blobs()))
    # A stream ("w|"): stdout may be a pipe, which has no position; the bytes are the same.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:

        def copy(name: str, digest: str) -> None:
            with open_blob(digest) as blob:
                _add(tar, name, blob, blob_size(digest))

        if kind == "oci":
            descriptor = {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": len(manifest.body),
                "annotations": {REF_NAME: reference},
            }
            index = {"schemaVersion": 2, "manifests": [descriptor]}
            _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", canonical_json(index))
            _directory(tar, "blobs")
            _directory(tar, "blobs/sha256")
            for m in dict.fromkeys([manifest, *children]):
                _add_bytes(tar, f"blobs/sha256/{_hex(m.digest)}", m.body)
            for digest in blobs:
                copy(f"blobs/sha256/{_hex(digest)}", digest)
        else:
            config_digest, *layers = manifest.blobs()
            # Layers stay gzipped: docker and podman load compressed layers and check them
            # against the config's diff_ids, so the image ID is the registry's config digest.
            config_file = f"{_hex(config_digest)}.json"
            entry = {
                "Config": config_file,
                "RepoTags": [reference],
                "Layers": [f"{_hex(d)}.tar.gz" for d in layers],
            }
            _add_bytes(tar, "manifest.json", canonical_json([entry]))
            copy(config_file, config_digest)
            for digest in dict.fromkeys(layers):
                copy(f"{_hex(digest)}.tar.gz", digest)


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


STDOUT = "-"
# Linux's PATH_MAX, its final NUL included: a longer name is refused before any system call.
PATH_MAX = 4096
# The files SQLite keeps beside a database.
_DATABASE_FILES = ("", "-wal", "-shm", "-journal")


class Output:
    """Where ``nixery build`` writes an archive: stdout (``-``), or a regular file.

    Checked before the build, so that a mistake costs no build and says so in one line. A
    file is written beside its target and renamed over it once whole, and only while the
    target is absent or a regular file: a symlink, a device, a directory is never replaced
    (as root, a rename over ``/dev/null`` would replace the device). The registry's own
    storage and state database are refused: a build must not overwrite what it reads. The
    directory is opened once, and the checks and the rename are made relative to it: a
    symlink on the way re-pointed during the build cannot move the rename elsewhere (into
    the storage, say)."""

    def __init__(
        self,
        target: str | None,
        directory: int = -1,
        name: str = "",
        partial: str = "",
        fd: int = -1,
    ) -> None:
        """``target``: the name as given, None for stdout; ``directory``: the target's open
        directory, where ``partial`` (open as ``fd``) takes ``name``'s place once whole."""
        self.target = target
        self._dir, self._name, self._partial, self._fd = directory, name, partial, fd

    @classmethod
    def check(cls, name: str, storage: Path, database: Path) -> Output:
        """The output ``name`` names, a temporary file already made beside it; ``BadOutput``
        when it cannot or must not be written there."""
        if name == STDOUT:
            if sys.stdout is None:  # started with stdout closed (``>&-``)
                raise BadOutput("stdout is closed: redirect it, or name a file")
            if sys.stdout.isatty():
                raise BadOutput("will not write an archive to a terminal: redirect it")
            return cls(None)
        if not name:
            raise BadOutput("the output's name is empty")
        if len(os.fsencode(name)) >= PATH_MAX:
            raise BadOutput("the output's path is longer than the system takes")
        try:
            return cls._file(name, storage, database)
        except OSError as e:
            raise BadOutput(f"cannot write {name!r}: {os_cause(e)}") from None

    @classmethod
    def _file(cls, name: str, storage: Path, database: Path) -> Output:
        target = Path(name)
        if name.endswith("/") or target.name in ("", ".."):
            raise BadOutput(f"{name!r} names a directory: only a file is written (or - for stdout)")
        try:
            directory = os.open(target.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as e:
            missing = "does not exist" if isinstance(e, FileNotFoundError) else "is not a directory"
            raise BadOutput(f"the output's directory {str(target.parent)!r} {missing}") from None
        try:
            longest = os.pathconf(directory, "PC_NAME_MAX")
            if len(os.fsencode(target.name)) > longest:
                raise BadOutput(f"the output's name is longer than {longest} bytes")
            _refuse_other_than_a_file(name, target.name, directory)
            # Where the opened directory is, whatever symlinks led there.
            where = Path(os.readlink(f"/proc/self/fd/{directory}")) / target.name
            db = database.resolve()
            if where in [db.with_name(db.name + suffix) for suffix in _DATABASE_FILES]:
                raise BadOutput(f"{name!r} is the registry's state database")
            if where.is_relative_to(storage.resolve()):
                raise BadOutput(f"{name!r} is in the registry's storage (STORAGE_PATH)")
            partial = f".nixery-build-{secrets.token_hex(8)}"
            # 0o666 less the umask, as the shell would create it.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            fd = os.open(partial, flags, 0o666, dir_fd=directory)
        except BaseException:
            os.close(directory)
            raise
        return cls(name, directory, target.name, partial, fd)

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The stream to write the archive to; a file takes the target's place once it is
        whole, if the target is still absent or a regular file."""
        if self.target is None:
            yield sys.stdout.buffer
            sys.stdout.flush()
            return
        fd, self._fd = self._fd, -1
        with os.fdopen(fd, "wb") as out:
            yield out
        _refuse_other_than_a_file(self.target, self._name, self._dir)  # it may have changed
        os.replace(self._partial, self._name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        self._partial = ""

    def discard(self) -> None:
        """Removes the temporary file, unless it took the target's place."""
        if self._fd >= 0:
            os.close(self._fd)
        if self._partial:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._partial, dir_fd=self._dir)
        if self._dir >= 0:
            os.close(self._dir)
        self._fd = self._dir = -1
        self._partial = ""


def _refuse_other_than_a_file(shown: str, name: str, directory: int) -> None:
    """``BadOutput`` unless ``name`` in ``directory`` is absent or a regular file; checked
    before the build and again before the rename."""
    try:
        mode = os.lstat(name, dir_fd=directory).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise BadOutput(f"cannot write {shown!r}: {os_cause(e)}") from None
    if not stat.S_ISREG(mode):
        raise BadOutput(
            f"{shown!r} is not a regular file: only a regular file is replaced (or - for stdout)"
        )
