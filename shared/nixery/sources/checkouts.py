"""Materialising directories atomically, keeping only the newest checkouts, and unpacking
tarballs safely."""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from nixery.caches import KeyedLocks
from nixery.errors import SourceUnavailable, os_cause
from nixery.sources.trust import COMMIT_RE

log = logging.getLogger(__name__)

# The checkouts' directory (NIXERY_CACHE_DIR), as clients read of it: never its path.
CHECKOUTS = "<checkouts>"

# Module-wide so that two source objects sharing a cache directory still take turns.
_CHECKOUT_LOCKS = KeyedLocks()


def materialise(target: Path, populate: Callable[[Path], object]) -> Path:
    """Create directory `target` by filling a sibling temporary directory and renaming it, so that
    a crash or a concurrent creator never leaves a half-written `target` behind."""
    if target.is_dir():
        return target
    with _CHECKOUT_LOCKS.hold(str(target)):
        return _fill(target, populate)


def _fill(target: Path, populate: Callable[[Path], object]) -> Path:
    """``materialise``'s work, under the target's lock."""
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    except OSError as e:
        raise _cannot_create(target, e) from e
    try:
        populate(staging)
        staging.chmod(0o755)
        staging.rename(target)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        # Another process sharing the cache directory finished first.
        if target.is_dir():
            return target
        raise _cannot_create(target, e) from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _cannot_create(target: Path, error: OSError) -> SourceUnavailable:
    """The client's message names no path (the checkouts are the server's business); the
    log's does."""
    log.error("cannot create %s: %s", target, error)
    return SourceUnavailable(f"cannot create the package set's checkout: {os_cause(error)}")


class Checkouts:
    """A directory of package-set checkouts, one per revision, pruned to the newest ``keep``.

    Which checkouts a running build still reads is known from time alone: a checkout is
    touched each time it is handed out, and no build outlives its deadline, so one handed
    out less than ``busy`` seconds (NIXERY_BUILD_DEADLINE) ago is kept whatever the count.
    That holds across processes sharing the directory, as no count in memory would.
    """

    def __init__(self, root: Path, keep: int, busy: float) -> None:
        self.root = root
        self.keep = keep
        self.busy = busy

    def get(self, revision: str, populate: Callable[[Path], object]) -> Path:
        """The checkout of a revision (a commit), made if need be; older ones are pruned."""
        target = self.root / revision
        with _CHECKOUT_LOCKS.hold(str(target)):
            _fill(target, populate)
            os.utime(target)  # in use from now on
        self.prune()
        return target

    def prune(self) -> None:
        """Deletes all but the newest ``keep`` checkouts, once no build can use them."""
        try:
            entries = [(e.stat().st_mtime, e) for e in self.root.iterdir() if e.is_dir()]
        except OSError:
            return  # unreadable now; the next checkout tries again
        idle_since = time.time() - self.busy
        checkouts = sorted((e for e in entries if COMMIT_RE.fullmatch(e[1].name)), reverse=True)
        # Staging and doomed directories that a crash left behind go too, once idle.
        leftovers = [e for e in entries if e[1].name.startswith((".tmp-", ".old-"))]
        for mtime, path in [*checkouts[self.keep :], *leftovers]:
            if mtime < idle_since:
                self._remove(path, idle_since)

    def _remove(self, path: Path, idle_since: float) -> None:
        """Renames the checkout out of the way under its lock (so that it is never handed
        out half deleted), then deletes it."""
        doomed = path.with_name(f".old-{uuid.uuid4().hex}")
        with _CHECKOUT_LOCKS.hold(str(path)):
            try:
                if path.stat().st_mtime >= idle_since:
                    return  # handed out meanwhile
                path.rename(doomed)
            except OSError:
                return
        shutil.rmtree(doomed, ignore_errors=True)


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
    except OSError as e:
        log.error("cannot unpack an archive into %s: %s", dest, e)
        raise SourceUnavailable(f"cannot unpack archive: {os_cause(e)}") from e
    except (tarfile.TarError, EOFError) as e:
        raise SourceUnavailable(f"cannot unpack archive: {e}") from e
    if strip_top and top is None:
        raise SourceUnavailable("archive is empty")
