"""Archives: deterministic tar layers, gzipped and hashed in one streaming pass.

A layer's bytes depend only on the files in it: entries are sorted, directories included,
ownership is root, every mtime is 1 (as in the Nix store), hard links become files, and the
GNU format spells long names without PAX records (which would carry times). The gzip stream
has no name and a zero mtime. One pass computes the uncompressed ``diff_id`` and the
compressed digest while the blob is written, so memory does not grow with the layer.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

# zlib level 6 (gzip's default); see docs for the measured size/speed trade-off.
GZIP_LEVEL = 6
CHUNK = 1 << 20
MTIME = 1
_BLOCK = 512


@dataclass(frozen=True)
class LayerBlob:
    """A layer as the manifest and config need it."""

    digest: str  # sha256 of the gzip blob
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # bytes of the gzip blob


@dataclass(frozen=True)
class Entry:
    """A synthetic tar entry (the image root layer is made of these, not of files)."""

    path: str  # relative, no leading slash
    kind: Literal["dir", "file", "symlink"]
    mode: int = 0o755
    target: str = ""
    data: bytes = b""


class _LayerWriter:
    """Hashes tar bytes, compresses them, hashes and writes the result: one pass."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        self.out = out
        self.tar_hash = hashlib.sha256()
        self.gz_hash = hashlib.sha256()
        self.size = 0
        self.compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip wrapper

    def write(self, data: bytes | memoryview) -> None:
        self.tar_hash.update(data)
        self._emit(self.compressor.compress(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self.gz_hash.update(data)
            self.out.write(data)
            self.size += len(data)

    def header(self, info: tarfile.TarInfo) -> None:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = MTIME
        self.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))

    def pad(self, size: int) -> None:
        if size % _BLOCK:
            self.write(bytes(_BLOCK - size % _BLOCK))

    def finish(self) -> LayerBlob:
        self.write(bytes(2 * _BLOCK))  # end-of-archive marker
        self._emit(self.compressor.flush())
        return LayerBlob(
            "sha256:" + self.gz_hash.hexdigest(), "sha256:" + self.tar_hash.hexdigest(), self.size
        )


def _info(name: str, kind: bytes, mode: int, size: int = 0, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = target
    return info


def write_store_layer(paths: Sequence[str], out: BinaryIO, level: int = GZIP_LEVEL) -> LayerBlob:
    """Writes the store paths (absolute, ``/nix/store/...``) as one gzipped tar layer."""
    writer = _LayerWriter(out, level)
    writer.header(_info("nix", tarfile.DIRTYPE, 0o755))
    writer.header(_info("nix/store", tarfile.DIRTYPE, 0o755))
    for path in sorted(paths):
        _write_tree(writer, path)
    return writer.finish()


def _write_tree(writer: _LayerWriter, path: str) -> None:
    stack = [path]
    while stack:
        current = stack.pop()
        st = os.lstat(current)
        name = current.lstrip("/")
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            writer.header(_info(name, tarfile.DIRTYPE, mode))
            children = sorted(os.listdir(current), reverse=True)
            stack.extend(os.path.join(current, child) for child in children)
        elif stat.S_ISLNK(st.st_mode):
            writer.header(_info(name, tarfile.SYMTYPE, 0o777, target=os.readlink(current)))
        elif stat.S_ISREG(st.st_mode):
            writer.header(_info(name, tarfile.REGTYPE, mode, st.st_size))
            copied = 0
            with open(current, "rb") as f:
                while chunk := f.read(CHUNK):
                    writer.write(chunk)
                    copied += len(chunk)
            if copied != st.st_size:
                raise OSError(f"{current} changed size while archived")
            writer.pad(copied)
        else:
            raise OSError(f"{current}: the Nix store holds no such file type")


def write_entries_layer(
    entries: Iterable[Entry], out: BinaryIO, level: int = GZIP_LEVEL
) -> LayerBlob:
    """Writes synthetic entries, sorted so that parents come before their children."""
    writer = _LayerWriter(out, level)
    for e in sorted(entries, key=lambda e: e.path.split("/")):
        if e.kind == "dir":
            writer.header(_info(e.path, tarfile.DIRTYPE, e.mode))
        elif e.kind == "symlink":
            writer.header(_info(e.path, tarfile.SYMTYPE, 0o777, target=e.target))
        else:
            writer.header(_info(e.path, tarfile.REGTYPE, e.mode, len(e.data)))
            writer.write(e.data)
            writer.pad(len(e.data))
    return writer.finish()
