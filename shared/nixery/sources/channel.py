"""Nixpkgs as NixOS channels publish it (NIXERY_CHANNEL)."""

from __future__ import annotations

import http.client
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nixery.caches import Clock, Memo
from nixery.config import BUILD_DEADLINE, KEEP_CHECKOUTS
from nixery.errors import ConfigError, SourceUnavailable
from nixery.records import Revision
from nixery.sources.checkouts import Checkouts, extract
from nixery.sources.history import History
from nixery.sources.trust import COMMIT_RE, Answer, Untrusted, check_source, public_url, trusted

# A leading letter, digit or "_" keeps "." and ".." (and option-like names) out of URLs.
CHANNEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
DEFAULT_TTL = 300.0
# Each channel is a branch of nixpkgs' repository that Hydra moves to each commit it verified:
# a commit tag must be in the history of one of them (NIXERY_TRUSTED_REFS).
CHANNEL_REPO = "https://github.com/NixOS/nixpkgs.git"
TRUSTED_REFS = ("refs/heads/nixos-*", "refs/heads/nixpkgs-*")
_USER_AGENT = "nixery"
_COPY_CHUNK = 1 << 20


class ChannelSource:
    """Nixpkgs as published by NixOS channels (NIXERY_CHANNEL).

    Tags: `latest` is the configured channel (or the configured commit, if that is what it is);
    40 hex digits are a nixpkgs commit, accepted only when it is in the history of a channel
    branch of nixpkgs' repository (or the operator lists it): the archive host serves the
    commits of forks too; anything else is the name of a channel. Revisions are nixpkgs
    commits, so their id names the archive host rather than a channel: the same commit reached
    through two channels is the same set, and shares one cache key.
    """

    def __init__(
        self,
        channel: str,
        cache_dir: Path,
        channel_url: str = "https://channels.nixos.org",
        archive_url: str = "https://github.com/NixOS/nixpkgs/archive",
        ttl: float = DEFAULT_TTL,
        clock: Clock = time.monotonic,
        timeout: float = 30.0,
        keep: int = KEEP_CHECKOUTS,
        busy: float = BUILD_DEADLINE,
        repo_url: str = CHANNEL_REPO,
        trusted_refs: Sequence[str] = TRUSTED_REFS,
        trusted_commits: Sequence[str] = (),
    ) -> None:
        if not CHANNEL_RE.fullmatch(channel):
            raise ConfigError(f"NIXERY_CHANNEL: invalid channel name {channel!r}")
        for name, url in (("NIXERY_CHANNEL_URL", channel_url), ("NIXERY_ARCHIVE_URL", archive_url)):
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ConfigError(f"{name} must be an http(s) URL, not {url!r}")
        self._channel = channel
        self._channel_url = channel_url.rstrip("/")
        self._archive_url = archive_url.rstrip("/")
        self._id = f"nixpkgs:{public_url(self._archive_url)}"
        self._dir = Path(cache_dir) / "channel"
        self._checkouts = Checkouts(self._dir, keep, busy)
        self._history = History(repo_url, self._dir, trusted_refs, trusted_commits)
        self._trusted_refs = f"{public_url(repo_url)} ({' '.join(trusted_refs)})"
        # Per socket operation, not for a whole download: a large archive may take longer.
        self._timeout = timeout
        self._opener = urllib.request.build_opener()
        self._revisions: Memo[Answer] = Memo(ttl, clock)

    def resolve(self, tag: str) -> Revision | None:
        return trusted(self._revisions.get(tag, lambda: self._lookup(tag)))

    def checkout(self, revision: Revision) -> Path:
        check_source(self._id, revision)
        return self._checkouts.get(revision.value, lambda dest: self._download(revision, dest))

    def tags(self) -> list[str]:
        """Only `latest`: other channels and every nixpkgs commit are tags too, but uncountable."""
        return ["latest"]

    def flake_origin(self, revision: Revision) -> None:
        """nixpkgs holds a flake.nix too; a channel reads it by its default.nix regardless."""
        return None

    def _lookup(self, tag: str) -> Answer:
        name = self._channel if tag == "latest" else tag
        if tag == "latest" and COMMIT_RE.fullmatch(name):
            # The operator's own pin is trusted; a commit from an image tag is checked.
            commit: str | None = name.lower()
        elif COMMIT_RE.fullmatch(name):
            found = self._history.check(name)
            if found is False:
                why = f"it is in the history of no channel branch of {self._trusted_refs}"
                return Untrusted(name.lower(), why)
            commit = found
        elif CHANNEL_RE.fullmatch(name):
            commit = self._channel_commit(name)
        else:
            return None
        return None if commit is None else Revision(self._id, commit)

    def _channel_commit(self, channel: str) -> str | None:
        url = f"{self._channel_url}/{channel}/git-revision"
        with self._open("GET", url) as response:
            if response is None:
                return None
            body = self._read(url, response, 1024).decode(errors="replace").strip()
        if not COMMIT_RE.fullmatch(body):
            raise SourceUnavailable(f"{url} did not answer a commit: {body[:80]!r}")
        return body.lower()

    def _download(self, revision: Revision, dest: Path) -> None:
        url = f"{self._archive_url}/{revision.value}.tar.gz"
        # Spooled to disk: a nixpkgs archive is tens of megabytes.
        with tempfile.TemporaryFile(dir=self._dir) as archive:
            with self._open("GET", url) as response:
                if response is None:
                    raise SourceUnavailable(f"{url} is gone")
                while chunk := self._read(url, response, _COPY_CHUNK):
                    archive.write(chunk)
            archive.seek(0)
            extract(archive, dest, strip_top=True)

    @contextmanager
    def _open(self, method: str, url: str) -> Iterator[http.client.HTTPResponse | None]:
        """The response to `method url`, or None on 404; any other failure is SourceUnavailable."""
        request = urllib.request.Request(url, method=method, headers={"User-Agent": _USER_AGENT})
        try:
            response = self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code != 404:
                raise SourceUnavailable(f"{method} {url}: HTTP {e.code} {e.reason}") from e
            response = None
        except (OSError, http.client.HTTPException) as e:
            raise SourceUnavailable(f"{method} {url}: {e}") from e
        if response is None:
            yield None
            return
        with response:
            yield response

    @staticmethod
    def _read(url: str, response: http.client.HTTPResponse, size: int) -> bytes:
        try:
            return response.read(size)
        except (OSError, http.client.HTTPException) as e:
            raise SourceUnavailable(f"GET {url}: {e}") from e
