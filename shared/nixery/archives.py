"""Archives: deterministic tar layers, gzipped and hashed in one streaming pass.

A layer's bytes depend only on the files in it: entries are sorted, directories included,
ownership is root, every mtime is 1 (as in the Nix store), hard links become files, and the
GNU format spells long names without PAX records (which would carry times). The gzip stream
has no name and a zero mtime. One pass computes the uncompressed ``diff_id`` and the
compressed digest while the blob is written, so memory does not grow with the layer.

Compression runs on every core the way pigz does it: the tar stream is cut into fixed 1 MiB
chunks, each deflated on its own thread (zlib releases the GIL) with the previous 32 KiB as
its dictionary and ended with a sync flush, and the pieces are concatenated under one gzip
header and trailer. Chunk boundaries depend only on the tar bytes, so the blob is the same
whatever the thread count or timing; at most a few chunks per thread are in flight.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tarfile
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Literal

# Level 2: as fast as level 1 and 2% smaller; level 6 (gzip's default) is 2.7x slower for
# 8% fewer bytes (docs/benchmarks.md). A cold pull should wait for Nix, not for gzip.
GZIP_LEVEL = 2
CHUNK = 1 << 20
MTIME = 1
_BLOCK = 512
_WINDOW = 32 * 1024  # deflate's window: the dictionary each chunk inherits
# magic, deflate, no flags (so no name), mtime 0, no extra flags, OS unknown
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# One pool for all layers, so parallel layers share the cores instead of multiplying threads.
_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="deflate")
_IN_FLIGHT = 2 * (os.cpu_count() or 1)


def _deflate(data: bytes, window: bytes, level: int, last: bool) -> bytes:
    """One chunk as raw deflate (-15: no wrapper), primed with the bytes before it: the
    dictionary keeps the ratio of one long stream, the sync flush ends on a byte boundary."""
    options = {"zdict": window} if window else {}
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, **options)
    return compressor.compress(data) + compressor.flush(
        zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    )


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
    """Hashes tar bytes, compresses them in parallel, hashes and writes the result: one pass."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        self.out = out
        self.level = level
        self.tar_hash = hashlib.sha256()
        self.gz_hash = hashlib.sha256()
        self.crc = 0
        self.length = 0
        self.size = 0
        self.buffer = bytearray()
        self.window = b""
        self.pending: deque[Future[bytes]] = deque()
        self._emit(_GZIP_HEADER)

    def write(self, data: bytes | memoryview) -> None:
        self.buffer += data
        while len(self.buffer) >= CHUNK:
            self._submit(bytes(self.buffer[:CHUNK]), last=False)
            del self.buffer[:CHUNK]

    def _submit(self, chunk: bytes, last: bool) -> None:
        self.tar_hash.update(chunk)
        self.crc = zlib.crc32(chunk, self.crc)
        self.length += len(chunk)
        self.pending.append(_POOL.submit(_deflate, chunk, self.window, self.level, last))
        self.window = chunk[-_WINDOW:]
        while len(self.pending) > _IN_FLIGHT:
            self._emit(self.pending.popleft().result())

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
        self._submit(bytes(self.buffer), last=True)
        while self.pending:
            self._emit(self.pending.popleft().result())
        self._emit(struct.pack("<II", self.crc, self.length & 0xFFFFFFFF))
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
