"""A package set in a local directory (NIXERY_PKGS_PATH)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from nixery.caches import Clock, Memo
from nixery.errors import SourceUnavailable, os_cause
from nixery.records import FlakeOrigin, Revision
from nixery.sources.trust import check_source

DEFAULT_TTL = 10.0
# The source's name in revisions, image keys and images: its content hash names the version,
# and where it lies on the server is no business of a client's (nor of the image's digest).
SOURCE_ID = "path"

log = logging.getLogger(__name__)


class PathSource:
    """A package set in a local directory (NIXERY_PKGS_PATH). It has a single version, `latest`,
    identified by a hash of its contents so that editing the directory changes the cache key,
    and moving it does not."""

    def __init__(
        self,
        path: Path,
        ttl: float = DEFAULT_TTL,
        clock: Clock = time.monotonic,
        flakes: bool = True,
    ) -> None:
        """With ``flakes`` off (NIXERY_PKGS_FLAKE), a flake.nix is ignored."""
        # Not resolved: a symlink that is re-pointed on deploy should be followed each time.
        self._path = Path(path).absolute()
        self._flakes = flakes
        self._hashes: Memo[str] = Memo(ttl, clock)

    def resolve(self, tag: str) -> Revision | None:
        if tag != "latest":
            return None
        return Revision(SOURCE_ID, self._content_hash())

    def checkout(self, revision: Revision) -> Path:
        check_source(SOURCE_ID, revision)
        if self._content_hash() != revision.value:
            log.warning("%s changed since %s was resolved", self._path, revision)
            raise SourceUnavailable(f"the package set changed since {revision} was resolved")
        return self._path

    def tags(self) -> list[str]:
        return ["latest"]

    def flake_origin(self, revision: Revision) -> FlakeOrigin | None:
        """No commit and no time: a directory's flake is known by its content alone."""
        check_source(SOURCE_ID, revision)
        return FlakeOrigin(revision.value, None, 0) if self._flakes else None

    def _content_hash(self) -> str:
        return self._hashes.get("", lambda: _tree_hash(self._path))


def _tree_hash(root: Path) -> str:
    """Hash what a Nix evaluation can see: names, contents, executable bits and symlink targets.
    Each record is NUL-framed (NUL cannot occur in names or link targets) and file contents enter
    as fixed-size digests, so two different trees cannot produce the same byte stream."""
    digest = hashlib.sha256()

    def walk(directory: str, prefix: bytes) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda entry: entry.name)
        for entry in entries:
            if entry.name == ".git":
                continue
            name = prefix + os.fsencode(entry.name)
            if entry.is_symlink():
                digest.update(b"l\0" + name + b"\0" + os.fsencode(os.readlink(entry.path)) + b"\0")
            elif entry.is_dir():
                digest.update(b"d\0" + name + b"\0")
                walk(entry.path, name + b"/")
            elif entry.is_file():
                executable = entry.stat().st_mode & 0o100
                with open(entry.path, "rb") as f:
                    content = hashlib.file_digest(f, "sha256").digest()
                digest.update(b"f\0" + name + b"\0" + (b"x" if executable else b"-") + content)

    # The client's message names no path: the server's log does.
    try:
        if not root.is_dir():
            log.error("the package set %s is not a directory", root)
            raise SourceUnavailable("the package set (NIXERY_PKGS_PATH) is not a directory")
        walk(str(root), b"")
    except OSError as e:
        log.error("cannot read the package set %s: %s", root, e)
        raise SourceUnavailable(f"cannot read the package set: {os_cause(e)}") from e
    return digest.hexdigest()
