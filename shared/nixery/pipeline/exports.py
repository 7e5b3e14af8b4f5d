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
import stat
import sys
import tarfile
import tempfile
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
# What a name that is no regular file names, for the refusal.
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
# The files SQLite keeps beside a database.
_DATABASE_FILES = ("", "-wal", "-shm", "-journal")


class Output:
    """Where ``nixery build`` writes an archive: stdout (``-``), or a regular file.

    Checked before the build, so that a mistake costs no build and says so in one line. A
    file is written beside its target and renamed over it once whole, and only while the
    target is absent or a regular file: a symlink, a device, a directory is never replaced
    (as root, a rename over ``/dev/null`` would replace the device). The registry's own
    storage and state database are refused: a build must not overwrite what it reads."""

    def __init__(self, target: Path | None, partial: Path | None) -> None:
        self.target, self._partial = target, partial

    @classmethod
    def check(cls, name: str, storage: Path, database: Path) -> Output:
        """The output ``name`` names, a temporary file already made beside it; ``BadOutput``
        when it cannot or must not be written there."""
        if name == STDOUT:
            if sys.stdout.isatty():
                raise BadOutput("will not write an archive to a terminal: redirect it")
            return cls(None, None)
        if not name:
            raise BadOutput("the output's name is empty")
        target = Path(name)
        directory = target.parent
        if not directory.is_dir():
            missing = "does not exist" if not directory.exists() else "is not a directory"
            raise BadOutput(f"the output's directory {str(directory)!r} {missing}")
        longest = os.pathconf(directory, "PC_NAME_MAX")
        if len(os.fsencode(target.name)) > longest:
            raise BadOutput(f"the output's name is longer than {longest} bytes")
        if len(os.fsencode(name)) >= os.pathconf(directory, "PC_PATH_MAX"):
            raise BadOutput("the output's path is longer than the system takes")
        _refuse_other_than_a_file(target)
        where = directory.resolve() / target.name
        db = database.resolve()
        if where in [db.with_name(db.name + suffix) for suffix in _DATABASE_FILES]:
            raise BadOutput(f"{str(target)!r} is the registry's state database")
        if where == storage.resolve() or where.is_relative_to(storage.resolve()):
            raise BadOutput(f"{str(target)!r} is in the registry's storage (STORAGE_PATH)")
        try:
            fd, partial = tempfile.mkstemp(prefix=".nixery-build-", dir=directory)
        except OSError as e:
            raise BadOutput(f"cannot write in {str(directory)!r}: {os_cause(e)}") from None
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a file the shell would create, not mkstemp's 0600
        os.close(fd)
        return cls(target, Path(partial))

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The stream to write the archive to; a file takes the target's place once it is
        whole, if the target is still absent or a regular file."""
        if self.target is None or self._partial is None:
            yield sys.stdout.buffer
            sys.stdout.flush()
            return
        with self._partial.open("wb") as out:
            yield out
        _refuse_other_than_a_file(self.target)  # it may have changed during the build
        self._partial.replace(self.target)
        self._partial = None

    def discard(self) -> None:
        """Removes the temporary file, unless it took the target's place."""
        if self._partial is not None:
            self._partial.unlink(missing_ok=True)


def _refuse_other_than_a_file(target: Path) -> None:
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    for test, kind in _KINDS:
        if test(mode):
            raise BadOutput(
                f"{str(target)!r} is {kind}: only a regular file is replaced (or - for stdout)"
            )
