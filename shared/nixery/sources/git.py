"""A package set in a git repository (NIXERY_PKGS_REPO)."""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from nixery.caches import Clock, Memo
from nixery.config import BUILD_DEADLINE, KEEP_CHECKOUTS
from nixery.errors import ConfigError, SourceUnavailable
from nixery.records import FlakeOrigin, Revision
from nixery.request import TAG_RE
from nixery.sources.checkouts import Checkouts, extract, materialise
from nixery.sources.git_command import run_git
from nixery.sources.history import History
from nixery.sources.trust import COMMIT_RE, Answer, Untrusted, check_source, public_url, trusted

DEFAULT_TTL = 60.0
# Commits named by a tag must be reachable from one of these (NIXERY_TRUSTED_REFS).
TRUSTED_REFS = ("refs/heads/*", "refs/tags/*")
_QUERY_TIMEOUT = 120.0
# Fetching a large set such as nixpkgs, even shallowly, can take minutes on a slow link.
_FETCH_TIMEOUT = 1800.0


class GitSource:
    """A package set in a git repository (NIXERY_PKGS_REPO).

    Tags: `latest` is the remote's HEAD; 40 hex digits are a commit, accepted only when one
    of the trusted refs (by default every branch and tag) reaches it, or the operator lists it;
    anything else is a tag or branch name, and when both exist the tag wins, as in git's own ref
    disambiguation. Branch names containing "/" cannot be named, since image tags cannot
    contain it.
    """

    def __init__(
        self,
        url: str,
        cache_dir: Path,
        ttl: float = DEFAULT_TTL,
        clock: Clock = time.monotonic,
        keep: int = KEEP_CHECKOUTS,
        busy: float = BUILD_DEADLINE,
        trusted_refs: Sequence[str] = TRUSTED_REFS,
        trusted_commits: Sequence[str] = (),
        flakes: bool = True,
    ) -> None:
        """With ``flakes`` off (NIXERY_PKGS_FLAKE), a flake.nix is ignored."""
        if url.startswith("-"):
            raise ConfigError(f"NIXERY_PKGS_REPO: {url!r} could be read as an option")
        self._url = url
        self._id = f"git:{public_url(url)}"
        self._dir = Path(cache_dir) / "git"
        url_hash = hashlib.sha256(url.encode()).hexdigest()[:32]
        self._mirror = self._dir / f"mirror-{url_hash}.git"
        self._history = History(url, self._dir, trusted_refs, trusted_commits)
        self._trusted_refs = " ".join(trusted_refs)
        self._checkouts = Checkouts(self._dir, keep, busy)
        self._flakes = flakes
        self._fetch_lock = threading.Lock()
        self._revisions: Memo[Answer] = Memo(ttl, clock)
        self._refs: Memo[list[str]] = Memo(ttl, clock)

    def resolve(self, tag: str) -> Revision | None:
        return trusted(self._revisions.get(tag, lambda: self._lookup(tag)))

    def tags(self) -> list[str]:
        """`latest` and the remote's branches and tags whose names are valid image tags."""
        return self._refs.get("", self._list_refs)

    def _list_refs(self) -> list[str]:
        refs = self._ls_remote("refs/heads/*", "refs/tags/*")
        names = {ref.split("/", 2)[2].removesuffix("^{}") for ref in refs}
        return sorted({"latest", *(n for n in names if TAG_RE.fullmatch(n))})

    def checkout(self, revision: Revision) -> Path:
        check_source(self._id, revision)
        return self._checkouts.get(revision.value, lambda dest: self._export(revision, dest))

    def flake_origin(self, revision: Revision) -> FlakeOrigin | None:
        """The commit and its time, as Nix's own git fetcher gives a flake (``self.rev``,
        ``self.lastModified``); asked of the mirror, which holds any commit checked out."""
        check_source(self._id, revision)
        if not self._flakes:
            return None
        if self._fetch(revision.value) is None:
            raise SourceUnavailable(f"{revision} is no longer available from the remote")
        when = run_git(
            *("-C", self._mirror, "show", "--no-patch", "--format=%ct", revision.value),
            timeout=_QUERY_TIMEOUT,
        )
        return FlakeOrigin(revision.value, revision.value, int(when.strip()))

    def _lookup(self, tag: str) -> Answer:
        if COMMIT_RE.fullmatch(tag):
            found = self._history.check(tag)
            if found is False:
                why = f"no trusted ref of the package repository ({self._trusted_refs}) reaches it"
                return Untrusted(tag.lower(), why)
            commit = found
        elif tag == "latest":
            commit = self._ls_remote("HEAD").get("HEAD")
        else:
            refs = self._ls_remote(f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}", f"refs/heads/{tag}")
            # An annotated tag is listed twice; the peeled ("^{}") line names its commit.
            commit = (
                refs.get(f"refs/tags/{tag}^{{}}")
                or refs.get(f"refs/tags/{tag}")
                or refs.get(f"refs/heads/{tag}")
            )
        return None if commit is None else Revision(self._id, commit)

    def _ls_remote(self, *patterns: str) -> dict[str, str]:
        """The remote's refs matching `patterns` (tail globs, filtered exactly by the caller)."""
        out = run_git("ls-remote", "--", self._url, *patterns, timeout=_QUERY_TIMEOUT)
        refs = {}
        for line in out.splitlines():
            commit, _, ref = line.partition("\t")
            refs[ref] = commit
        return refs

    def _fetch(self, commit: str) -> str | None:
        """Make `commit` present in the local mirror and return it, or None if the remote
        does not have it. Shallow, because the full history of a set like nixpkgs is gigabytes;
        fetched into a ref, so that the objects stay reachable."""
        found = self._local_commit(commit)
        if found is not None:
            return found
        mirror = materialise(
            self._mirror,
            lambda dest: run_git("init", "--quiet", "--bare", dest, timeout=_QUERY_TIMEOUT),
        )
        # Concurrent shallow fetches into one repository fail on its shallow.lock.
        with self._fetch_lock:
            found = self._local_commit(commit)
            if found is not None:
                return found
            try:
                run_git(
                    *("-C", mirror, "-c", "gc.auto=0", "-c", "maintenance.auto=false", "fetch"),
                    *("--quiet", "--depth=1", "--no-tags", "--no-write-fetch-head"),
                    *("--", self._url, f"+{commit}:refs/nixery/{commit}"),
                    timeout=_FETCH_TIMEOUT,
                )
            except SourceUnavailable:
                # The remote's message for an unknown commit differs between servers and
                # versions, so ask whether it is reachable at all: if so, the commit is unknown.
                self._ls_remote("HEAD")
                return None
            return self._local_commit(commit)

    def _local_commit(self, commit: str) -> str | None:
        """The commit `commit` names in the mirror (an annotated tag's id names its commit), or
        None if the mirror lacks it or it names no commit."""
        if not self._mirror.is_dir():
            return None
        try:
            out = run_git(
                *("-C", self._mirror, "rev-parse", "--quiet", "--verify", f"{commit}^{{commit}}"),
                timeout=_QUERY_TIMEOUT,
            )
        except SourceUnavailable:
            return None
        return out.strip()

    def _export(self, revision: Revision, dest: Path) -> None:
        if self._fetch(revision.value) is None:
            raise SourceUnavailable(f"{revision} is no longer available from the remote")
        with tempfile.TemporaryFile(dir=self._dir) as archive:
            run_git(
                *("-C", self._mirror, "archive", "--format=tar", revision.value),
                stdout=archive,
                timeout=_FETCH_TIMEOUT,
            )
            archive.seek(0)
            extract(archive, dest, strip_top=False)
