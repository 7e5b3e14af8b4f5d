"""Where the Nix package set comes from, and which exact version of it an image tag means.

Every request is pinned to an exact revision before anything is built, so that the build cache
can be keyed on it and two requests for the same tag never mix two versions of the set. Looking a
tag up costs I/O (a directory walk, `git ls-remote`, an HTTP request), so answers are kept for a
short time; a tag that does not exist is an answer too ("not found"), while a source that cannot
be reached raises `SourceError` and is asked again next time.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .config import Config

Clock = Callable[[], float]
_T = TypeVar("_T")

_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
# A leading letter, digit or "_" keeps "." and ".." (and option-like names) out of URLs.
_CHANNEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # the image tag grammar
_GIT_QUERY_TIMEOUT = 120.0
# Fetching a large set such as nixpkgs, even shallowly, can take minutes on a slow link.
_GIT_FETCH_TIMEOUT = 1800.0
_USER_AGENT = "nixery"
_PATH_TTL = 10.0
_GIT_TTL = 60.0
_CHANNEL_TTL = 300.0
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Revision:
    """An exact version of a package set: equal revisions always mean identical trees."""

    source: str
    value: str

    def __str__(self) -> str:
        return f"{self.source}@{self.value}"


class SourceError(Exception):
    """A source could not be reached or read (transient: the caller answers 503/500, not 404)."""


class Source(Protocol):
    """What the registry and the builder need, so that any of the three kinds can be configured."""

    def resolve(self, tag: str) -> Revision | None:
        """The exact revision `tag` names now, or None if there is no such version."""
        ...

    def checkout(self, revision: Revision) -> Path:
        """A directory holding the set at exactly `revision`, its default.nix at the top."""
        ...

    def tags(self) -> list[str]:
        """The tags worth listing (tags/list): `latest`, and whatever else can be enumerated."""
        ...


class _KeyedLocks:
    """One lock per key, dropped once nobody holds or waits for it, so that work on one key is
    serialised without keeping a lock for every key ever seen (tags come from the internet)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._mutex:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class _TTLCache(Generic[_T]):
    """Answers kept for `ttl` seconds. Lookups of one key are serialised so that a burst of
    requests for a tag costs one lookup; exceptions propagate and are not kept."""

    def __init__(self, ttl: float, clock: Clock) -> None:
        self._ttl = ttl
        self._clock = clock
        self._locks = _KeyedLocks()
        self._mutex = threading.Lock()
        # Insertion order is (nearly) expiry order, so expired entries are dropped from the front;
        # one that is not, because a slow lookup finished late, is still never returned.
        self._entries: dict[str, tuple[float, _T]] = {}

    def get(self, key: str, compute: Callable[[], _T]) -> _T:
        with self._locks.hold(key):
            now = self._clock()
            with self._mutex:
                while self._entries:
                    oldest = next(iter(self._entries))
                    if self._entries[oldest][0] > now:
                        break
                    del self._entries[oldest]
                entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return entry[1]
            value = compute()
            with self._mutex:
                # Re-inserted rather than updated, to move the key to the back.
                self._entries.pop(key, None)
                self._entries[key] = (now + self._ttl, value)
            return value


def _check_source(source: str, revision: Revision) -> None:
    if revision.source != source:
        raise ValueError(f"revision {revision} does not come from {source}")


# Module-wide so that two source objects sharing a cache directory still take turns.
_CHECKOUT_LOCKS = _KeyedLocks()


def _materialise(target: Path, populate: Callable[[Path], object]) -> Path:
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
            raise SourceError(f"cannot create {target}: {e}") from e
        try:
            populate(staging)
            staging.chmod(0o755)
            staging.rename(target)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            # Another process sharing the cache directory finished first.
            if target.is_dir():
                return target
            raise SourceError(f"cannot create {target}: {e}") from e
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _extract(archive: IO[bytes], dest: Path, *, strip_top: bool) -> None:
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
                raise SourceError(f"archive has a file {top!r} at its top level")
            return None
        prefix = top + "/"
        if not member.name.startswith(prefix):
            raise SourceError(f"archive has several top-level entries: {top!r}, {member.name!r}")
        name = member.name.removeprefix(prefix)
        # A hard link names its target by its path in the archive, a symlink relative to itself.
        linkname = member.linkname.removeprefix(prefix) if member.islnk() else member.linkname
        return tarfile.data_filter(member.replace(name=name, linkname=linkname, deep=False), path)

    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            tar.extractall(dest, filter=strip if strip_top else "data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"cannot unpack archive: {e}") from e
    if strip_top and top is None:
        raise SourceError("archive is empty")


class PathSource:
    """A package set in a local directory (NIXERY_PKGS_PATH). It has a single version, `latest`,
    identified by a hash of its contents so that editing the directory changes the cache key."""

    def __init__(self, path: Path, ttl: float = _PATH_TTL, clock: Clock = time.monotonic) -> None:
        # Not resolved: a symlink that is re-pointed on deploy should be followed each time.
        self._path = Path(path).absolute()
        self._id = f"path:{self._path}"
        self._hashes: _TTLCache[str] = _TTLCache(ttl, clock)

    def resolve(self, tag: str) -> Revision | None:
        if tag != "latest":
            return None
        return Revision(self._id, self._content_hash())

    def checkout(self, revision: Revision) -> Path:
        _check_source(self._id, revision)
        if self._content_hash() != revision.value:
            raise SourceError(f"{self._path} changed since {revision} was resolved")
        return self._path

    def tags(self) -> list[str]:
        return ["latest"]

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

    try:
        if not root.is_dir():
            raise SourceError(f"{root} is not a directory")
        walk(str(root), b"")
    except OSError as e:
        raise SourceError(f"cannot read {root}: {e}") from e
    return digest.hexdigest()


def _public_url(url: str) -> str:
    """The URL without credentials, since source ids end up in cache keys and logs."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class GitSource:
    """A package set in a git repository (NIXERY_PKGS_REPO).

    Tags: `latest` is the remote's HEAD; 40 hex digits are a commit; anything else is a tag or
    branch name, and when both exist the tag wins, as in git's own ref disambiguation. Branch
    names containing "/" cannot be named, since image tags cannot contain it.
    """

    def __init__(
        self, url: str, cache_dir: Path, ttl: float = _GIT_TTL, clock: Clock = time.monotonic
    ) -> None:
        if url.startswith("-"):
            raise ValueError(f"git URL {url!r} could be read as an option")
        self._url = url
        self._id = f"git:{_public_url(url)}"
        self._dir = Path(cache_dir) / "git"
        url_hash = hashlib.sha256(url.encode()).hexdigest()[:32]
        self._mirror = self._dir / f"mirror-{url_hash}.git"
        self._fetch_lock = threading.Lock()
        self._revisions: _TTLCache[Revision | None] = _TTLCache(ttl, clock)
        self._refs: _TTLCache[list[str]] = _TTLCache(ttl, clock)

    def resolve(self, tag: str) -> Revision | None:
        return self._revisions.get(tag, lambda: self._lookup(tag))

    def tags(self) -> list[str]:
        """`latest` and the remote's branches and tags whose names are valid image tags."""
        return self._refs.get("", self._list_refs)

    def _list_refs(self) -> list[str]:
        refs = self._ls_remote("refs/heads/*", "refs/tags/*")
        names = {ref.split("/", 2)[2].removesuffix("^{}") for ref in refs}
        return sorted({"latest", *(n for n in names if _TAG.fullmatch(n))})

    def checkout(self, revision: Revision) -> Path:
        _check_source(self._id, revision)
        return _materialise(self._dir / revision.value, lambda dest: self._export(revision, dest))

    def _lookup(self, tag: str) -> Revision | None:
        if _COMMIT.fullmatch(tag):
            commit = self._fetch(tag.lower())
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
        out = _git("ls-remote", "--", self._url, *patterns, timeout=_GIT_QUERY_TIMEOUT)
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
        mirror = _materialise(
            self._mirror,
            lambda dest: _git("init", "--quiet", "--bare", dest, timeout=_GIT_QUERY_TIMEOUT),
        )
        # Concurrent shallow fetches into one repository fail on its shallow.lock.
        with self._fetch_lock:
            found = self._local_commit(commit)
            if found is not None:
                return found
            try:
                _git(
                    *("-C", mirror, "-c", "gc.auto=0", "-c", "maintenance.auto=false", "fetch"),
                    *("--quiet", "--depth=1", "--no-tags", "--no-write-fetch-head"),
                    *("--", self._url, f"+{commit}:refs/nixery/{commit}"),
                    timeout=_GIT_FETCH_TIMEOUT,
                )
            except SourceError:
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
            out = _git(
                *("-C", self._mirror, "rev-parse", "--quiet", "--verify", f"{commit}^{{commit}}"),
                timeout=_GIT_QUERY_TIMEOUT,
            )
        except SourceError:
            return None
        return out.strip()

    def _export(self, revision: Revision, dest: Path) -> None:
        if self._fetch(revision.value) is None:
            raise SourceError(f"{revision} is no longer available from the remote")
        with tempfile.TemporaryFile(dir=self._dir) as archive:
            _git(
                *("-C", self._mirror, "archive", "--format=tar", revision.value),
                stdout=archive,
                timeout=_GIT_FETCH_TIMEOUT,
            )
            archive.seek(0)
            _extract(archive, dest, strip_top=False)


def _git(*args: str | Path, timeout: float, stdout: IO[bytes] | None = None) -> str:
    """Run git without ever prompting (a server has nobody to answer); failures, including
    a remote that cannot be reached, become SourceError. Returns stdout unless redirected."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    try:
        result = subprocess.run(
            ["git", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            timeout=timeout,
            check=False,
        )
    # Messages leave out the command line: it holds the URL, which may carry credentials.
    except subprocess.TimeoutExpired as e:
        raise SourceError(f"git timed out after {timeout:g}s") from e
    except OSError as e:
        raise SourceError(f"cannot run git: {e}") from e
    if result.returncode != 0:
        raise SourceError(f"git: {result.stderr.decode(errors='replace').strip()}")
    return "" if stdout is not None else result.stdout.decode()


class _SameMethodRedirects(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected HEAD into a GET; GitHub redirects archive URLs, so without this
    checking that a commit exists would start downloading its whole tarball."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()
        return new


class ChannelSource:
    """Nixpkgs as published by NixOS channels (NIXERY_CHANNEL).

    Tags: `latest` is the configured channel (or the configured commit, if that is what it is);
    40 hex digits are a nixpkgs commit; anything else is the name of a channel. Revisions are
    nixpkgs commits, so their id names the archive host rather than a channel: the same commit
    reached through two channels is the same set, and shares one cache key.
    """

    def __init__(
        self,
        channel: str,
        cache_dir: Path,
        channel_url: str = "https://channels.nixos.org",
        archive_url: str = "https://github.com/NixOS/nixpkgs/archive",
        ttl: float = _CHANNEL_TTL,
        clock: Clock = time.monotonic,
        timeout: float = 30.0,
    ) -> None:
        if not _CHANNEL.fullmatch(channel):
            raise ValueError(f"invalid channel name {channel!r}")
        for url in (channel_url, archive_url):
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"not an http(s) URL: {url!r}")
        self._channel = channel
        self._channel_url = channel_url.rstrip("/")
        self._archive_url = archive_url.rstrip("/")
        self._id = f"nixpkgs:{_public_url(self._archive_url)}"
        self._dir = Path(cache_dir) / "channel"
        # Per socket operation, not for a whole download: a large archive may take longer.
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_SameMethodRedirects)
        self._revisions: _TTLCache[Revision | None] = _TTLCache(ttl, clock)

    def resolve(self, tag: str) -> Revision | None:
        return self._revisions.get(tag, lambda: self._lookup(tag))

    def checkout(self, revision: Revision) -> Path:
        _check_source(self._id, revision)
        return _materialise(self._dir / revision.value, lambda dest: self._download(revision, dest))

    def tags(self) -> list[str]:
        """Only `latest`: other channels and every nixpkgs commit are tags too, but uncountable."""
        return ["latest"]

    def _lookup(self, tag: str) -> Revision | None:
        name = self._channel if tag == "latest" else tag
        if tag == "latest" and _COMMIT.fullmatch(name):
            # The operator's own pin is trusted; a commit from an image tag is checked.
            commit: str | None = name.lower()
        elif _COMMIT.fullmatch(name):
            commit = self._commit_exists(name.lower())
        elif _CHANNEL.fullmatch(name):
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
        if not _COMMIT.fullmatch(body):
            raise SourceError(f"{url} did not answer a commit: {body[:80]!r}")
        return body.lower()

    def _commit_exists(self, commit: str) -> str | None:
        with self._open("HEAD", f"{self._archive_url}/{commit}.tar.gz") as response:
            return None if response is None else commit

    def _download(self, revision: Revision, dest: Path) -> None:
        url = f"{self._archive_url}/{revision.value}.tar.gz"
        # Spooled to disk: a nixpkgs archive is tens of megabytes.
        with tempfile.TemporaryFile(dir=self._dir) as archive:
            with self._open("GET", url) as response:
                if response is None:
                    raise SourceError(f"{url} is gone")
                while chunk := self._read(url, response, _COPY_CHUNK):
                    archive.write(chunk)
            archive.seek(0)
            _extract(archive, dest, strip_top=True)

    @contextmanager
    def _open(self, method: str, url: str) -> Iterator[http.client.HTTPResponse | None]:
        """The response to `method url`, or None on 404; any other failure is SourceError."""
        request = urllib.request.Request(url, method=method, headers={"User-Agent": _USER_AGENT})
        try:
            response = self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code != 404:
                raise SourceError(f"{method} {url}: HTTP {e.code} {e.reason}") from e
            response = None
        except (OSError, http.client.HTTPException) as e:
            raise SourceError(f"{method} {url}: {e}") from e
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
            raise SourceError(f"GET {url}: {e}") from e


def open_source(
    *,
    pkgs_path: str | None,
    pkgs_repo: str | None,
    channel: str | None,
    cache_dir: Path,
    channel_url: str,
    archive_url: str,
    ttl: float | None = None,
) -> Source:
    """The source the configuration names; empty values count as unset, as an empty environment
    variable usually means "not configured". With none set, the nixos-unstable channel is used.
    `ttl` None keeps each kind's default, which reflects how costly its lookups are."""
    given = {
        "NIXERY_PKGS_PATH": pkgs_path,
        "NIXERY_PKGS_REPO": pkgs_repo,
        "NIXERY_CHANNEL": channel,
    }
    chosen = [name for name, value in given.items() if value]
    if len(chosen) > 1:
        raise ValueError(f"set only one of {', '.join(given)} (got {', '.join(chosen)})")
    if pkgs_path:
        return PathSource(Path(pkgs_path), ttl=_PATH_TTL if ttl is None else ttl)
    if pkgs_repo:
        return GitSource(pkgs_repo, cache_dir, ttl=_GIT_TTL if ttl is None else ttl)
    return ChannelSource(
        channel or "nixos-unstable",
        cache_dir,
        channel_url=channel_url,
        archive_url=archive_url,
        ttl=_CHANNEL_TTL if ttl is None else ttl,
    )


def configured_source(config: Config) -> Source:
    """The source a service's configuration names."""
    return open_source(
        pkgs_path=config.pkgs_path,
        pkgs_repo=config.pkgs_repo,
        channel=config.channel,
        cache_dir=config.cache_dir,
        channel_url=config.channel_url,
        archive_url=config.archive_url,
        ttl=config.revision_ttl,
    )
