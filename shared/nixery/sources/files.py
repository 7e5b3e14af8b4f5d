"""Materialising directories atomically, and unpacking tarballs safely."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..errors import SourceUnavailable
from .cache import KeyedLocks

# Module-wide so that two source objects sharing a cache directory still take turns.
_CHECKOUT_LOCKS = KeyedLocks()


def materialise(target: Path, populate: Callable[[Path], object]) -> Path:
    """Create directory `target` by filling a sibling temporary directory and renaming it, so that
    a crash or a concurrent creator never leaves a half-written `target` behind."""
    if target.is_dir():
        return target
    with _CHECKOUT_LOCKS.hold(str(target)):
        if target.is_dir():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        except OSError as e:
            raise SourceUnavailable(f"cannot create {target}: {e}") from e
        try:
            populate(staging)
            staging.chmod(0o755)
            staging.rename(target)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            # Another process sharing the cache directory finished first.
            if target.is_dir():
                return target
            raise SourceUnavailable(f"cannot create {target}: {e}") from e
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def extract(archive: IO[bytes], dest: Path, *, strip_top: bool) -> None:
    """Unpack a (possibly compressed) tarball with the "data" filter, so that nothing lands
    outside `dest` and no special files or ownership come along; with `strip_top`, the archive
    must hold a single top-level directory, whose contents become `dest`'s."""
    top: str | None = None

    def strip(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        nonlocal top
        if top is None:
            top = member.name.split("/", 1)[0]
        if member.name.rstrip("/") == top:
            if not member.isdir():
                raise SourceUnavailable(f"archive has a file {top!r} at its top level")
            return None
        prefix = top + "/"
        if not member.name.startswith(prefix):
            raise SourceUnavailable(
                f"archive has several top-level entries: {top!r}, {member.name!r}"
            )
        name = member.name.removeprefix(prefix)
        # A hard link names its target by its path in the archive, a symlink relative to itself.
        linkname = member.linkname.removeprefix(prefix) if member.islnk() else member.linkname
        return tarfile.data_filter(member.replace(name=name, linkname=linkname, deep=False), path)

    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            tar.extractall(dest, filter=strip if strip_top else "data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceUnavailable(f"cannot unpack archive: {e}") from e
    if strip_top and top is None:
        raise SourceUnavailable("archive is empty")
