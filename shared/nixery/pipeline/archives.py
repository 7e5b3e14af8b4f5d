"""Archives: deterministic tar layers, gzipped and hashed in one streaming pass.

A layer's bytes depend only on the files in it: entries are sorted, directories included,
ownership is root, every mtime is 1 (as in the Nix store), hard links become files, and the
GNU format spells long names without PAX records (which would carry times). The gzip stream
has no name and a zero mtime. One pass computes the uncompressed ``diff_id`` and the
compressed digest while the blob is written, so memory does not grow with the layer.

Compression runs on every core the way pigz does it: the tar stream is cut into fixed 1 MiB
chunks, each deflated on its own thread (ISA-L releases the GIL) with the previous 32 KiB as
its dictionary and ended with a sync flush, and the pieces are concatenated under one gzip
header and trailer. Chunk boundaries depend only on the tar bytes, so the blob is the same
whatever the thread count or timing. One ``Compressor`` per process bounds the chunks held in
memory by all the layers being written at once.

Deflate is ISA-L's (``isal``, pinned), several times zlib's speed, so that a cold pull waits
for Nix, not for gzip. ISA-L picks its code at run time from the CPU's features: at levels 0-2
its SSE4.2, AVX, AVX2 and AVX-512 paths give the same bytes (at level 3 they do not), but its
generic path, taken by CPUs without SSE4.2 (made before 2008), does not, so a ``Compressor``
refuses to run there. tests/e2e/test_archives_cpu.py checks both under emulated CPUs.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tarfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

from isal import isal_zlib

from nixery.config import cpus
from nixery.oci.manifests import LayerBlob

# ISA-L level 2 (of 0-3), blocks of 16 Ki tokens (memLevel 2-3): 7.3x pigz -6's throughput on
# 2 cores for blobs 8.5% larger, 3.3x zlib level 2's (the writer before) for 1.6% larger.
# Level 1 is no faster and 1.1% larger; level 3 differs between CPUs (docs/benchmarks.md).
GZIP_LEVEL = 2
_MEM_LEVEL = 3
CHUNK = 1 << 20
MTIME = 1
_BLOCK = 512
_WINDOW = 32 * 1024  # deflate's window: the dictionary each chunk inherits
# magic, deflate, no flags (so no name), mtime 0, no extra flags, OS unknown
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# Text whose deflate differs on ISA-L's generic path, and its digest on the others.
_PROBE = b"".join(b"%d %x\n" % (i, i * i) for i in range(2000))
_PROBE_SHA256 = "3c80fe47dd6ae408ed700a134f036ada99d0688cddcda6d4a4f004053457804c"

Deflate = Callable[[bytes, bytes, int, bool], bytes]
"""Deflates one chunk: (chunk, the bytes before it, level, whether it ends the stream)."""


def deflate(data: bytes, window: bytes, level: int, last: bool) -> bytes:
    """One chunk as raw deflate (-15: no wrapper), primed with the bytes before it: the
    dictionary keeps the ratio of one long stream, the sync flush ends on a byte boundary."""
    compressor = isal_zlib.compressobj(
        level, isal_zlib.DEFLATED, -15, memLevel=_MEM_LEVEL, zdict=window
    )
    return compressor.compress(data) + compressor.flush(
        isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH
    )


def _check_deflate() -> None:
    probe = deflate(_PROBE, _PROBE[-_WINDOW:], GZIP_LEVEL, True)
    if hashlib.sha256(probe).hexdigest() != _PROBE_SHA256:
        raise RuntimeError(
            "ISA-L deflates differently here (a CPU without SSE4.2, or another isal version):"
            " layers made here would not match those made elsewhere"
        )


class Sink(Protocol):
    """Where a layer's bytes go: a file, or a blob store's writer."""

    def write(self, data: bytes, /) -> object: ...


class Compressor:
    """Deflates chunks on one thread pool, with a bound on the chunks in memory at once.

    Shared by every layer a process writes, so that parallel layers share the cores rather
    than multiplying threads, and memory stays near ``in_flight`` MiB however many run.
    """

    def __init__(
        self, threads: int | None = None, in_flight: int | None = None, deflate: Deflate = deflate
    ) -> None:
        """``deflate`` is ISA-L's; bench/archives.py passes the zlib writer it compares with."""
        _check_deflate()
        threads = threads or cpus()
        self._deflate = deflate
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="deflate")
        self._slots = threading.BoundedSemaphore(in_flight or 4 * threads)

    def reserve(self, wait: bool) -> bool:
        """Takes a slot for one chunk; a writer holding chunks of its own does not wait."""
        return self._slots.acquire(blocking=wait)

    def submit(self, chunk: bytes, window: bytes, level: int, last: bool) -> Future[bytes]:
        """Deflates a chunk in a reserved slot; ``done`` frees it once the result is taken."""
        return self._pool.submit(self._deflate, chunk, window, level, last)

    def done(self) -> None:
        self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Entry:
    """A synthetic tar entry (the image root layer is made of these, not of files)."""

    path: str  # relative, no leading slash
    kind: Literal["dir", "file", "symlink"]
    mode: int = 0o755
    target: str = ""
    data: bytes = b""
    owner: int = 0  # uid and gid alike: the image's own user owns its home


class _LayerWriter:
    """Hashes tar bytes, compresses them in parallel, hashes and writes the result: one pass."""

    def __init__(self, out: Sink, compressor: Compressor, level: int) -> None:
        self.out = out
        self.compressor = compressor
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
        self.crc = isal_zlib.crc32(chunk, self.crc)
        self.length += len(chunk)
        # Waiting for a slot while holding finished chunks of our own could wait forever
        # (other writers may do the same), so make room ourselves first.
        while not self.compressor.reserve(wait=not self.pending):
            self._emit_oldest()
        self.pending.append(self.compressor.submit(chunk, self.window, self.level, last))
        self.window = chunk[-_WINDOW:]

    def _emit_oldest(self) -> None:
        data = self.pending.popleft().result()
        self.compressor.done()
        self._emit(data)

    def discard(self) -> None:
        """Frees the slots of an abandoned layer."""
        while self.pending:
            future = self.pending.popleft()
            if not future.cancel():
                future.exception()  # wait: the pool still holds the chunk
            self.compressor.done()

    def _emit(self, data: bytes) -> None:
        if data:
            self.gz_hash.update(data)
            self.out.write(data)
            self.size += len(data)

    def header(self, info: tarfile.TarInfo) -> None:
        """Owners are numeric only: root, unless ``_info`` was given another."""
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
            self._emit_oldest()
        self._emit(struct.pack("<II", self.crc, self.length & 0xFFFFFFFF))
        return LayerBlob(
            "sha256:" + self.gz_hash.hexdigest(), "sha256:" + self.tar_hash.hexdigest(), self.size
        )


def _info(
    name: str, kind: bytes, mode: int, size: int = 0, target: str = "", owner: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = target
    info.uid = info.gid = owner
    return info


def write_store_layer(
    paths: Sequence[str], out: Sink, compressor: Compressor, level: int = GZIP_LEVEL
) -> LayerBlob:
    """Writes the store paths (absolute, ``/nix/store/...``) as one gzipped tar layer."""
    writer = _LayerWriter(out, compressor, level)
    try:
        writer.header(_info("nix", tarfile.DIRTYPE, 0o755))
        writer.header(_info("nix/store", tarfile.DIRTYPE, 0o755))
        for path in sorted(paths):
            _write_tree(writer, path)
        return writer.finish()
    except BaseException:
        writer.discard()
        raise


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
    entries: Iterable[Entry], out: Sink, compressor: Compressor, level: int = GZIP_LEVEL
) -> LayerBlob:
    """Writes synthetic entries, sorted so that parents come before their children."""
    writer = _LayerWriter(out, compressor, level)
    try:
        for e in sorted(entries, key=lambda e: e.path.split("/")):
            if e.kind == "dir":
                writer.header(_info(e.path, tarfile.DIRTYPE, e.mode, owner=e.owner))
            elif e.kind == "symlink":
                writer.header(_info(e.path, tarfile.SYMTYPE, 0o777, target=e.target))
            else:
                writer.header(_info(e.path, tarfile.REGTYPE, e.mode, len(e.data)))
                writer.write(e.data)
                writer.pad(len(e.data))
        return writer.finish()
    except BaseException:
        writer.discard()
        raise
