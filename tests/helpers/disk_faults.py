"""Faults of the disk and of SQLite, injected for real rather than mocked, for the contract
suites and the end-to-end fault tests alike.

The tests run as root, and root ignores file modes: a `chmod` makes nothing read-only nor
forbidden to it. What binds even root is used instead: a read-only bind mount, a filesystem
of its own that is filled up, this process as another user for a while, descriptors that
the kernel refuses to read or write.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m") -> Iterator[Path]:
    """A filesystem of ``size`` of its own (tmpfs) at ``path``: it fills up quickly."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Fills the disk to its last byte with one file, returned: deleting it frees the disk."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        chunk = bytes(64 << 10)
        while True:
            os.write(fd, chunk)  # a partial write, then ENOSPC
    except OSError:
        return filler
    finally:
        os.close(fd)


@contextlib.contextmanager
def read_only(file: Path) -> Iterator[None]:
    """The file read-only, even to root: a read-only bind mount of it over itself. Those who
    opened it before may still write; whoever opens it now may only read."""
    subprocess.run(["mount", "--bind", str(file), str(file)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(file)], check=True)
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(file)], check=False)


@contextlib.contextmanager
def locked(database: Path) -> Iterator[None]:
    """Another process holding the database: a second connection in ``BEGIN EXCLUSIVE``."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def fail_reads_and_writes(database: Path) -> None:
    """Makes every read and write of the database's files (itself, its WAL and its shared
    memory) fail in this process, as a failing disk does, while their locks still work:
    each descriptor open on them becomes one of a socket, which SQLite can lock but neither
    read nor write at an offset. For good: the connections that hold them stay broken. What
    a connection holds in its page cache it may still read."""
    ends = socket.socketpair()
    try:
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile, like the listing's own
                if os.readlink(f"/proc/self/fd/{fd}").startswith(str(database)):
                    os.dup2(ends[0].fileno(), int(fd))
    finally:
        for end in ends:
            end.close()


@contextlib.contextmanager
def forbidden(directory: Path) -> Iterator[None]:
    """The directory off limits to this process: root's own with mode 0700, while the
    process runs as the user nobody (whose files it writes meanwhile are nobody's)."""
    mode = directory.stat().st_mode
    directory.chmod(0o700)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        directory.chmod(mode)
