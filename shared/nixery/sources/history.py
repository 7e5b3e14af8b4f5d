"""Which commits the operator trusts: those in the history of a repository's trusted refs.

An image tag may name a commit, and building it evaluates that commit's Nix code on the
server. Public code hosts serve the commits of forks and pull requests under the parent
repository's URL, so a host that has a commit proves nothing about who wrote it. A commit is
trusted when it is reachable from one of the configured refs of the configured repository
(nixpkgs' channel branches, or a git source's branches and tags), or listed by the operator.

Reachability is checked with git, on commits alone (``--filter=tree:0``: no trees, no files):
the commit is fetched by itself first, for its date; then the trusted refs' history since a
day before that date, which for a year of nixpkgs is some tens of MB; then git answers whether
any trusted ref contains the commit. Refusing is the safe side of every doubt: a commit whose
date lies, or that only a ref newer than its last fetch reaches, is refused until a later
check finds it. Answers are kept: a trusted commit stays trusted, a commit the remote does not
have is remembered as unknown for ``UNKNOWN_TTL``, and a refusal is asked again only once the
source's revision cache has let it go.

Checks take turns (one fetch at a time), each on a request's thread, so made-up commit tags
could hold every thread in that queue: at most ``CHECKS_AT_ONCE`` run or wait, and one more
is refused at once (``CommitChecksBusy``, a 503).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from cachetools import LRUCache

from nixery.caches import BoundedCache
from nixery.errors import CommitChecksBusy, SourceUnavailable
from nixery.sources.checkouts import materialise
from nixery.sources.git_command import run_git

# Commit dates are set by the committer's clock; descendants made on a clock a little behind
# their parent's must still fall within the history fetched.
DATE_MARGIN = 86400
_QUERY_TIMEOUT = 120.0
_FETCH_TIMEOUT = 1800.0
_TRUSTED = "refs/nixery-trusted/"
CHECKS_AT_ONCE = 4  # commits checked or waiting for their turn, per repository
UNKNOWN_TTL = 600.0  # seconds a commit the remote does not have is remembered as unknown


class History:
    """The trusted history of one repository, kept as a commits-only bare repository."""

    def __init__(
        self, url: str, cache_dir: Path, patterns: Iterable[str], allowed: Iterable[str] = ()
    ) -> None:
        """Kept in ``cache_dir``, under a name of its URL's; ``patterns``: ref globs such as
        ``refs/heads/*``; ``allowed``: commits trusted whatever their history (the
        operator's list)."""
        self._url = url
        self._dir = cache_dir / f"history-{hashlib.sha256(url.encode()).hexdigest()[:32]}.git"
        self._refspecs = [f"+{p}:{_TRUSTED}{p.removeprefix('refs/')}" for p in patterns]
        self._allowed = frozenset(c.lower() for c in allowed)
        self._trusted: LRUCache[str, str] = LRUCache(maxsize=4096)
        self._unknown: BoundedCache[bool] = BoundedCache(ttl=UNKNOWN_TTL)
        self._lock = threading.Lock()  # one fetch at a time: they share shallow.lock
        self._checks = threading.BoundedSemaphore(CHECKS_AT_ONCE)

    def check(self, commit: str) -> str | Literal[False] | None:
        """The commit (peeled, for an annotated tag's id) if trusted; False if it exists but
        is not trusted; None if the repository has no such object. Raises ``CommitChecksBusy``
        while ``CHECKS_AT_ONCE`` others are being checked."""
        commit = commit.lower()
        if commit in self._allowed:
            return commit
        if (known := self._trusted.get(commit)) is not None:
            return known
        if self._unknown.get(commit):
            return None
        if not self._checks.acquire(blocking=False):
            raise CommitChecksBusy(
                f"{CHECKS_AT_ONCE} commit tags are being checked against the package "
                "repository's history, as many as may be at once; retry later"
            )
        try:
            with self._lock:
                return self._check(commit)
        finally:
            self._checks.release()

    def _check(self, commit: str) -> str | Literal[False] | None:
        peeled = self._fetch_commit(commit)
        if peeled is None:
            self._unknown.keep(commit, True)
            return None
        if peeled in self._allowed or self._reachable(peeled):
            self._trusted[commit] = peeled
            return peeled
        return False

    def _git(self, *args: str, timeout: float = _QUERY_TIMEOUT) -> str:
        return run_git("-C", self._dir, *args, timeout=timeout)

    def _fetch_commit(self, commit: str) -> str | None:
        """Fetches the commit by itself (no parents, no trees); its peeled id, or None."""
        materialise(
            self._dir,
            lambda dest: run_git("init", "--quiet", "--bare", dest, timeout=_QUERY_TIMEOUT),
        )
        try:
            self._fetch(["--depth=1"], [f"+{commit}:refs/nixery-probe/{commit}"])
        except SourceUnavailable:
            # The remote's message for an unknown object differs between servers and
            # versions, so ask whether it answers at all: if so, the commit is unknown.
            run_git("ls-remote", "--", self._url, "HEAD", timeout=_QUERY_TIMEOUT)
            return None
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").strip()
        except SourceUnavailable:
            return None  # an object that is no commit (a tree, a blob)

    def _reachable(self, commit: str) -> bool:
        """Whether a trusted ref reaches the commit, in their history since its date."""
        date = int(self._git("log", "-1", "--format=%ct", commit).strip() or 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(date - DATE_MARGIN))
        try:
            self._fetch(["--prune", f"--shallow-since={since}"], self._refspecs)
        except SourceUnavailable:
            # No trusted ref has a commit since then (git refuses an empty shallow fetch), or
            # the remote failed: then ls-remote raises, and the request is retried later.
            run_git("ls-remote", "--", self._url, "HEAD", timeout=_QUERY_TIMEOUT)
            return False
        refs = self._git("for-each-ref", "--contains", commit, "--format=%(refname)", _TRUSTED)
        return bool(refs.strip())

    def _fetch(self, options: list[str], refspecs: list[str]) -> None:
        self._git(
            *("-c", "gc.auto=0", "-c", "maintenance.auto=false", "fetch", "--quiet"),
            *("--filter=tree:0", "--no-tags", "--no-write-fetch-head", *options),
            *("--", self._url, *refspecs),
            timeout=_FETCH_TIMEOUT,
        )
