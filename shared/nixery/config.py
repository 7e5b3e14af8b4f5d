"""Configuration from Nixery's environment variables (and ours, prefixed ``NIXERY_``).

Each role reads only what it uses: the local server (``LocalSettings``, here), the registry
function and the builder service (``nixery.gcp.settings``) are built from the shared parts
below. Invalid or contradictory settings fail at start, with a message that names the
variable; an empty variable counts as unset, as it usually means "not configured".
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from nixery.errors import ConfigError
from nixery.request import AMD64, ARCHITECTURES, MAX_PACKAGES, Architecture, architecture

SOURCE_VARIABLES = ("NIXERY_CHANNEL", "NIXERY_PKGS_REPO", "NIXERY_PKGS_PATH")


def package_dir(name: str) -> Path:
    """A directory shipped inside the installed package (``http/static``, ``prepare-image``)."""
    return Path(str(resources.files("nixery") / name))


@dataclass(frozen=True)
class Rate:
    count: int
    window: float  # seconds


# Every environment variable the package reads, with what it sets: the one list that
# docs/configuration.md must match (tests/unit/test_configuration_docs.py). ``Env`` refuses
# to read a name that is not here, so a new variable cannot skip the documentation.
VARIABLES: Mapping[str, str] = {
    # The package source (exactly one of the first three)
    "NIXERY_PKGS_PATH": "a local package set: a directory with default.nix or flake.nix",
    "NIXERY_PKGS_REPO": "a git repository; the tag is a branch, tag or commit",
    "NIXERY_CHANNEL": "a nixpkgs channel or commit; other tags name other channels or commits",
    "NIXERY_CHANNEL_URL": "where <channel>/git-revision is read",
    "NIXERY_ARCHIVE_URL": "where <commit>.tar.gz is fetched",
    "NIXERY_REVISION_TTL": "seconds a tag's resolved revision is cached",
    "NIXERY_TRUSTED_REFS": "git ref patterns whose history a commit tag must be in",
    "NIXERY_TRUSTED_COMMITS": "commits accepted as tags whatever their history",
    "NIXERY_CHANNEL_REPO": "the git repository whose channel branches hold the trusted commits",
    "NIXERY_PKGS_FLAKE": "auto: a git or path set holding flake.nix is a flake; off: never",
    "NIXERY_CHECKOUTS_KEEP": "package-set checkouts kept",
    "NIXERY_CACHE_DIR": "where source checkouts are kept",
    # Storage
    "NIXERY_STORAGE_BACKEND": "filesystem (local mode) or gcs (Google Cloud mode)",
    "STORAGE_PATH": "local mode's blobs, state and source checkouts",
    "NIXERY_STATE_PATH": "the SQLite file",
    "GCS_BUCKET": "the bucket blobs are stored in (Google Cloud mode)",
    "NIXERY_GC_MAX_AGE": "days nixery gc keeps an image after its last pull by tag",
    # Serving
    "PORT": "HTTP port",
    "NIXERY_HOST": "address to listen on",
    "NIXERY_BUILD_WAIT": "seconds a manifest request waits for its build before a 503",
    "NIXERY_FAILURE_TTL": "seconds a failed build is remembered",
    # Builds
    "NIX_TIMEOUT": "seconds any one Nix builder may run",
    "NIX_POPULARITY_URL": "popularity data for layering (http(s) URL or path)",
    "NIXERY_BUILD_DEADLINE": "seconds one build may take, checkout to publication",
    "NIXERY_STORE_LIMIT": "bytes the Nix store is kept under",
    "NIXERY_LAYER_BUDGET": "maximum layers per image",
    "NIXERY_BUILD_WORKERS": "builds that run at once (local mode)",
    "NIXERY_PLATFORMS": "Nix systems each image is built for, the default first",
    "NIXERY_PREPARE_IMAGE": "the prepare-image/ directory",
    "NIXERY_EVAL_ALLOW": "host paths a restricted evaluation (or a flake's local input) may read",
    # Limits
    "NIXERY_MAX_PACKAGES": "packages an image may hold",
    "NIXERY_MAX_IMAGE_SIZE": "bytes of closure an image may hold",
    "NIXERY_CLIENT_BUILDS": "new builds one client may start, as COUNT/SECONDS",
    "NIXERY_MAX_QUEUED_BUILDS": "builds that may wait (local) or be under way (Google Cloud)",
    "NIXERY_TRUSTED_PROXIES": "proxies in front that append their client to X-Forwarded-For",
    "NIXERY_SERVER_THREADS": "local server: request threads",
    "NIXERY_MAX_WAITERS": "requests that may wait for builds at once",
    "NIXERY_CLIENT_WAITERS": "requests one address may have waiting for builds",
    "NIXERY_BUILD_WAITERS": "requests that may wait for one image's build",
    "NIXERY_MAX_CONNECTIONS": "local server: open connections",
    "NIXERY_CLIENT_CONNECTIONS": "local server: connections one address may hold",
    "NIXERY_HEADER_TIMEOUT": "local server: seconds a request may take to arrive",
    "NIXERY_IDLE_TIMEOUT": "local server: seconds a connection may sit idle",
    # Private registries
    "NIXERY_AUTH": "basic or token, for a private registry",
    "NIXERY_AUTH_USERS": "name:hash pairs, hashes from nixery hash-password",
    "NIXERY_AUTH_SECRET": "the key tokens are signed with",
    "NIXERY_AUTH_FAILURES": "failed logins one address or user name may have, as COUNT/SECONDS",
    "NIXERY_AUTH_CHECKS": "passwords checked at once",
    # Signing
    "NIXERY_SIGNING_KEY": "a PEM private key every image manifest is signed with",
    "NIXERY_SIGNING_KMS_KEY": "a Cloud KMS key version the builder signs manifests with",
    "NIXERY_KMS_ENDPOINT": "the Cloud KMS API",
    # Pages
    "WEB_DIR": "static files served outside /v2/",
    "NIXERY_PUBLIC_URL": "the registry's URL as clients reach it",
    # Google Cloud
    "GOOGLE_CLOUD_PROJECT": "the project",
    "GCP_PROJECT": "the project, where GOOGLE_CLOUD_PROJECT is not set",
    "NIXERY_TASKS_LOCATION": "the Cloud Tasks queue's location",
    "NIXERY_TASKS_QUEUE": "the Cloud Tasks queue",
    "NIXERY_BUILDER_URL": "the builder service's URL, the tasks' target",
    "NIXERY_TASKS_SERVICE_ACCOUNT": "the account whose OIDC token the tasks carry",
    "NIXERY_TASKS_EMULATOR_HOST": "a Cloud Tasks emulator to enqueue to instead",
    "NIXERY_URL_TTL": "seconds a signed blob URL is valid",
    "THREADS": "the registry function's request threads (functions-framework's)",
    "NIXERY_FUNCTION_TIMEOUT": "the registry function's request timeout as deployed",
    "CLOUD_RUN_TIMEOUT_SECONDS": "the registry function's request timeout, from the runtime",
    "NIXERY_PICKUP_WAIT": "seconds an enqueued build may wait for a builder to claim it",
    "NIXERY_LEASE_TTL": "seconds a builder's lease lasts without a heartbeat",
    "NIXERY_TASKS_MIN_BACKOFF": "the Cloud Tasks queue's min_backoff, seconds",
    "NIXERY_TASKS_MAX_BACKOFF": "the Cloud Tasks queue's max_backoff, seconds",
    "NIXERY_TASKS_MAX_DOUBLINGS": "the Cloud Tasks queue's max_doublings",
    "NIXERY_FIRESTORE_DATABASE": "the Firestore database",
    "NIXERY_FIRESTORE_PREFIX": "the prefix of the Firestore collections",
    "NIXERY_IAM_ENDPOINT": "the IAM Credentials API",
    "NIXERY_BLOB_URL": "a public mirror's base URL of blobs, instead of signed URLs",
    "NIXERY_BACKEND_TIMEOUT": "seconds any one call to Firestore, GCS or Cloud Tasks may take",
    "STORAGE_EMULATOR_HOST": "a GCS emulator, the host signed URLs name",
    "K_SERVICE": "set on Cloud Run and Cloud Functions: logs are JSON for Cloud Logging",
}


class Env:
    """Typed reads of the environment; every error names its variable."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self._env = env

    def get(self, name: str) -> str | None:
        if name not in VARIABLES:  # every read goes through here: a bug, not a setting
            raise AssertionError(f"{name} is read but not listed in nixery.config.VARIABLES")
        return self._env.get(name) or None

    def need(self, name: str, why: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigError(f"{name} must be set {why}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, not {value}")
        return value

    def size(self, name: str, default: int | None) -> int | None:
        """Bytes, with an optional K, M, G or T suffix (powers of 1024); 0 means none."""
        raw = self.get(name)
        if raw is None:
            return default
        match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", raw.strip(), re.IGNORECASE)
        if match is None:
            raise ConfigError(f"{name} must be a size such as 4G or 500M, not {raw!r}")
        value = int(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " ")
        return value or None

    def seconds(self, name: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise ConfigError(f"{name} must be between {low:g} and {high:g} seconds, not {raw}")
        return value

    def words(self, name: str, pattern: str, sep: str = r"[\s,]+") -> tuple[str, ...] | None:
        """A list separated by spaces or commas (or ``sep``), each word matching ``pattern``."""
        raw = self.get(name)
        if raw is None:
            return None
        words = tuple(w for w in re.split(sep, raw.strip()) if w)
        for word in words:
            if not re.fullmatch(pattern, word):
                raise ConfigError(f"{name}: {word!r} is not valid here")
        return words

    def rate(self, name: str) -> Rate | None:
        """COUNT/SECONDS, such as ``10/3600``."""
        raw = self.get(name)
        if raw is None:
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", raw)
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise ConfigError(f"{name} must be COUNT/SECONDS, such as 10/3600, not {raw!r}")
        return Rate(int(match.group(1)), float(match.group(2)))

    def url(self, name: str, default: str) -> str:
        value = self.get(name) or default
        if not value.startswith(("https://", "http://")):
            raise ConfigError(f"{name} must be an http(s) URL, not {value!r}")
        return value.rstrip("/")

    def directory(self, name: str, default: Path, *markers: str) -> Path:
        """A directory holding one of ``markers``, e.g. a package set's default.nix."""
        path = Path(self.get(name) or default)
        if not any((path / marker).is_file() for marker in markers):
            raise ConfigError(f"{name}: no {' or '.join(markers)} in {path}")
        return path


# --- Shared parts --------------------------------------------------------------------


# A build's time after Nix (layering, archiving, uploading) is kept out of Nix's share.
ARCHIVE_SHARE = 0.2
# What one build may take by default: Cloud Tasks' longest dispatch deadline.
BUILD_DEADLINE = 1800.0


def build_deadline(env: Env, high: float = 86400.0) -> float:
    """One build's time, read by every part whose limits follow from it: the builder (Nix's
    share, archiving's), the sources (how long a checkout may be in use) and, in Google Cloud
    mode, the registry (the tasks' deadline)."""
    return env.seconds("NIXERY_BUILD_DEADLINE", BUILD_DEADLINE, 60.0, high)


@dataclass(frozen=True)
class WaitLimits:
    """How many requests may wait for builds at once: in all, from one address, for one
    image (``service.waiters``). Each holds a request thread while it waits."""

    total: int
    per_client: int
    per_build: int


def wait_limits(env: Env, threads_from: str, threads: int) -> WaitLimits:
    """By default half the threads may wait, an eighth from one address and a quarter for one
    image; the rest are for cached pulls, which must never find every thread waiting."""
    total = env.integer("NIXERY_MAX_WAITERS", max(1, threads // 2), 1, 100_000)
    if total >= threads:
        raise ConfigError(
            f"NIXERY_MAX_WAITERS ({total}) must be under {threads_from} ({threads}): requests "
            "for cached images need threads that no waiting request holds"
        )
    return WaitLimits(
        total=total,
        per_client=env.integer("NIXERY_CLIENT_WAITERS", min(total, max(1, threads // 8)), 1, total),
        per_build=env.integer("NIXERY_BUILD_WAITERS", min(total, max(1, threads // 4)), 1, total),
    )


# A checkout of nixpkgs takes a few hundred MB, on the builder's in-memory disk.
KEEP_CHECKOUTS = 2


@dataclass(frozen=True)
class SourceSettings:
    """Where the package set comes from; exactly one of the three kinds is set."""

    channel: str | None
    pkgs_repo: str | None
    pkgs_path: Path | None
    channel_url: str
    archive_url: str
    revision_ttl: float | None  # None: each source kind's own default
    cache_dir: Path  # checkouts of git and channel revisions
    keep_checkouts: int  # the newest few; older ones are deleted once no build can use them
    checkout_busy: float  # how long a build may use a checkout: NIXERY_BUILD_DEADLINE
    channel_repo: str | None  # the repository whose channel branches say which commits to trust
    trusted_refs: tuple[str, ...] | None  # None: each source kind's own default
    trusted_commits: tuple[str, ...]
    flakes: bool = True  # a git or path checkout holding flake.nix is read as a flake


def source_settings(env: Env, cache_dir: Path) -> SourceSettings:
    chosen = [name for name in SOURCE_VARIABLES if env.get(name)]
    if len(chosen) > 1:
        raise ConfigError(f"set only one of {', '.join(chosen)}")
    pkgs_path = env.get("NIXERY_PKGS_PATH")
    flakes = env.get("NIXERY_PKGS_FLAKE") or "auto"
    if flakes not in ("auto", "off"):
        raise ConfigError(f"NIXERY_PKGS_FLAKE must be auto or off, not {flakes!r}")
    # A flake is read as one (nix.flakes), unless told otherwise.
    marked = ("default.nix", "flake.nix") if flakes == "auto" else ("default.nix",)
    return SourceSettings(
        channel=env.get("NIXERY_CHANNEL"),
        pkgs_repo=env.get("NIXERY_PKGS_REPO"),
        pkgs_path=env.directory("NIXERY_PKGS_PATH", Path(), *marked) if pkgs_path else None,
        channel_url=env.url("NIXERY_CHANNEL_URL", "https://channels.nixos.org"),
        archive_url=env.url("NIXERY_ARCHIVE_URL", "https://github.com/NixOS/nixpkgs/archive"),
        revision_ttl=env.seconds("NIXERY_REVISION_TTL", 0.0)
        if env.get("NIXERY_REVISION_TTL")
        else None,
        cache_dir=Path(env.get("NIXERY_CACHE_DIR") or cache_dir),
        keep_checkouts=env.integer("NIXERY_CHECKOUTS_KEEP", KEEP_CHECKOUTS, 1, 1000),
        checkout_busy=build_deadline(env),
        channel_repo=env.get("NIXERY_CHANNEL_REPO"),
        trusted_refs=env.words("NIXERY_TRUSTED_REFS", r"refs/[A-Za-z0-9._/*-]+"),
        trusted_commits=env.words("NIXERY_TRUSTED_COMMITS", r"[0-9a-fA-F]{40}") or (),
        flakes=flakes == "auto",
    )


@dataclass(frozen=True)
class BuildSettings:
    """What the pipeline needs: Nix, layering data and limits."""

    nix_timeout: int
    deadline: float  # seconds one build may take, from its checkout to its publication
    store_limit: int | None  # bytes the Nix store is kept under, if any
    popularity_url: str | None
    prepare_image: Path
    layer_budget: int
    eval_allow: tuple[Path, ...]  # host paths a restricted evaluation may read
    max_image_size: int | None  # bytes of closure (NAR sizes) an image may hold
    signing_key: Path | None = None  # a PEM private key each manifest is signed with
    public_url: str | None = None  # the registry's, for the images' build-page annotation

    @property
    def nix_budget(self) -> float:
        """Seconds Nix may take in one build: what the deadline leaves after archiving."""
        return self.deadline * (1 - ARCHIVE_SHARE)


def build_settings(
    env: Env, max_deadline: float = 86400.0, store_limit: int | None = None
) -> BuildSettings:
    """``store_limit`` is the mode's default. Refuses a ``NIX_TIMEOUT`` (one derivation's
    limit) that the deadline could not honour: such a build would be cut off by the deadline
    instead, after spending all of it."""
    settings = BuildSettings(
        nix_timeout=env.integer("NIX_TIMEOUT", 60, 1, 86400),
        deadline=build_deadline(env, max_deadline),
        store_limit=env.size("NIXERY_STORE_LIMIT", store_limit),
        popularity_url=env.get("NIX_POPULARITY_URL"),
        prepare_image=env.directory(
            "NIXERY_PREPARE_IMAGE", package_dir("prepare-image"), "default.nix"
        ),
        layer_budget=env.integer("NIXERY_LAYER_BUDGET", 100, 2, 125),
        eval_allow=tuple(map(Path, env.words("NIXERY_EVAL_ALLOW", r"/[^:]*", sep=":") or ())),
        max_image_size=env.size("NIXERY_MAX_IMAGE_SIZE", None),
        signing_key=Path(key) if (key := env.get("NIXERY_SIGNING_KEY")) else None,
        public_url=_public_url(env.get("NIXERY_PUBLIC_URL")),
    )
    if settings.nix_timeout > settings.nix_budget:
        raise ConfigError(
            f"NIX_TIMEOUT ({settings.nix_timeout} s) must not exceed the "
            f"{settings.nix_budget:g} s that NIXERY_BUILD_DEADLINE ({settings.deadline:g} s) "
            f"leaves for Nix (the rest is for archiving and uploading)"
        )
    return settings


# PBKDF2-SHA256 hashes as `nixery hash-password` writes them: algorithm$iterations$salt$hash.
PASSWORD_HASH = "pbkdf2-sha256"
PASSWORD_HASH_RE = re.compile(rf"{PASSWORD_HASH}\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
USER_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")


# Failed logins an address, or a user name, may have per window before it is refused unchecked.
AUTH_FAILURES = Rate(10, 60.0)


CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # a container's CPU limit, under cgroup v2


def cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may keep busy: those it may run on, or fewer under a cgroup v2
    quota (a container's CPU limit, which the CPU count does not show); at least one."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 here, or none of ours
        pass
    return max(1, count)


def auth_checks() -> int:
    """Passwords checked at once by default: half the CPUs, so that a flood of wrong passwords
    leaves the other half to the requests of clients that have logged in."""
    return max(1, cpus() // 2)


@dataclass(frozen=True)
class AuthSettings:
    scheme: Literal["basic", "token"]
    users: Mapping[str, str]  # name -> hash
    secret: bytes  # signs tokens
    failures: Rate = AUTH_FAILURES
    checks: int = field(default_factory=auth_checks)


def auth_settings(env: Env, need_secret: bool = False) -> AuthSettings | None:
    """NIXERY_AUTH, NIXERY_AUTH_USERS and NIXERY_AUTH_SECRET. ``need_secret``: where many
    instances must accept each other's tokens (Google Cloud), the secret must be given."""
    scheme = env.get("NIXERY_AUTH")
    if scheme is None:
        return None
    if scheme != "basic" and scheme != "token":
        raise ConfigError(f"NIXERY_AUTH must be basic or token, not {scheme!r}")
    users = {}
    for entry in env.words("NIXERY_AUTH_USERS", r"[^:]+:.+") or ():
        name, _, hashed = entry.partition(":")
        if not USER_RE.fullmatch(name) or not PASSWORD_HASH_RE.fullmatch(hashed):
            raise ConfigError(
                f"NIXERY_AUTH_USERS: {name!r} needs a name and a hash from `nixery hash-password`"
            )
        users[name] = hashed
    if not users:
        raise ConfigError("NIXERY_AUTH_USERS must name at least one user when NIXERY_AUTH is set")
    secret = env.get("NIXERY_AUTH_SECRET")
    if secret is not None and len(secret) < 32:
        raise ConfigError("NIXERY_AUTH_SECRET must be at least 32 characters")
    if secret is None and need_secret and scheme == "token":
        raise ConfigError("NIXERY_AUTH_SECRET must be set, so that every instance accepts tokens")
    kind: Literal["basic", "token"] = "basic" if scheme == "basic" else "token"
    return AuthSettings(
        kind,
        users,
        secret.encode() if secret else os.urandom(32),
        failures=env.rate("NIXERY_AUTH_FAILURES") or AUTH_FAILURES,
        checks=env.integer("NIXERY_AUTH_CHECKS", auth_checks(), 1, 1024),
    )


# How long a manifest request waits for its build before a 503 with Retry-After: under the
# 5 minutes without progress after which containerd's CRI plugin (Kubernetes) cancels a
# pull. Docker, podman and skopeo set no response timeout, but none retries a 5xx on a
# manifest, so the wait is as long as containerd allows (docs/clients.md, "Waiting for a build").
BUILD_WAIT = 240.0


@dataclass(frozen=True)
class ServeSettings:
    """What the protocol side needs: how long to wait and to remember, the web page, and
    what one client may ask for."""

    failure_ttl: float
    build_wait: float
    web_dir: Path | None
    max_packages: int
    client_builds: Rate | None  # new builds one client may start, per window
    trusted_proxies: int  # proxies before us whose X-Forwarded-For entry is the client's
    auth: AuthSettings | None  # None: public
    public_url: str | None  # how clients reach the registry, for the pages; else the request's
    platforms: tuple[Architecture, ...] = (AMD64,)  # NIXERY_PLATFORMS, the default first


def serve_settings(env: Env, trusted_proxies: int = 0, instances: int = 1) -> ServeSettings:
    """``trusted_proxies``: the mode's default (Google's front end on Google Cloud);
    ``instances``: more than one where tokens must be accepted by instances that did not
    sign them."""
    web = env.get("WEB_DIR")
    return ServeSettings(
        failure_ttl=env.seconds("NIXERY_FAILURE_TTL", 300.0),
        build_wait=env.seconds("NIXERY_BUILD_WAIT", BUILD_WAIT),
        web_dir=Path(web) if web else package_dir("http/static"),
        max_packages=env.integer("NIXERY_MAX_PACKAGES", MAX_PACKAGES, 1, MAX_PACKAGES),
        client_builds=env.rate("NIXERY_CLIENT_BUILDS"),
        trusted_proxies=env.integer("NIXERY_TRUSTED_PROXIES", trusted_proxies, 0, 10),
        auth=auth_settings(env, need_secret=instances > 1),
        public_url=_public_url(env.get("NIXERY_PUBLIC_URL")),
        platforms=_platforms(env.get("NIXERY_PLATFORMS")),
    )


def _platforms(value: str | None) -> tuple[Architecture, ...]:
    """NIXERY_PLATFORMS: Nix systems separated by commas or spaces, the default first."""
    systems = list(dict.fromkeys((value or AMD64.nix_system).replace(",", " ").split()))
    known = [a for s in systems if (a := architecture(s)) is not None]
    if not systems or len(known) < len(systems):
        names = ", ".join(a.nix_system for a in ARCHITECTURES)
        raise ConfigError(f"NIXERY_PLATFORMS={value!r}: list Nix systems among {names}")
    return tuple(known)


def _public_url(url: str | None) -> str | None:
    if url and not re.fullmatch(r"https?://[^/\s?#]+/?", url):
        raise ConfigError(f"NIXERY_PUBLIC_URL must be a URL such as https://nixery.example.org, "
                          f"not {url!r}")  # fmt: skip
    return url


@dataclass(frozen=True)
class GcSettings:
    """What `nixery gc` keeps, in either mode."""

    max_age: float  # seconds an image may go unpulled
    grace: float  # seconds a blob is kept whatever: a build under way keeps what it wrote
    failure_ttl: float


def gc_settings(env: Env, days: float | None = None) -> GcSettings:
    """``days``: --max-age, which overrides NIXERY_GC_MAX_AGE."""
    if days is None:
        days = env.seconds("NIXERY_GC_MAX_AGE", 30.0, low=0.0)
    return GcSettings(
        max_age=86400 * days,
        grace=2 * build_deadline(env),
        failure_ttl=serve_settings(env).failure_ttl,
    )


def check_backend(env: Env, expected: str) -> None:
    backend = env.get("NIXERY_STORAGE_BACKEND") or expected
    if backend != expected:
        raise ConfigError(f"NIXERY_STORAGE_BACKEND must be {expected!r} here, not {backend!r}")


# --- The local server ----------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    """What the local HTTP server lets clients hold (``local.http_server``)."""

    threads: int = 64  # each manifest request waiting for a build holds one (WaitLimits)
    connections: int = 1000
    per_client: int = 32  # connections one address may hold
    header_timeout: float = 10.0  # seconds from a request's first byte (or accept) to its last
    idle_timeout: float = 30.0  # seconds a connection may sit without a request


@dataclass(frozen=True)
class LocalSettings:
    source: SourceSettings
    build: BuildSettings
    serve: ServeSettings
    storage_path: Path
    state_path: Path
    host: str
    port: int
    build_workers: int
    max_queued: int | None  # builds that may wait for a worker
    connections: ConnectionLimits
    waiters: WaitLimits


def local_settings(environ: Mapping[str, str] = os.environ) -> LocalSettings:
    env = Env(environ)
    check_backend(env, "filesystem")
    storage = Path(env.need("STORAGE_PATH", "for local mode (NIXERY_STORAGE_BACKEND=filesystem)"))
    threads = env.integer("NIXERY_SERVER_THREADS", 64, 4, 1024)
    return LocalSettings(
        source=source_settings(env, storage / "sources"),
        build=build_settings(env),
        serve=serve_settings(env),
        storage_path=storage,
        state_path=Path(env.get("NIXERY_STATE_PATH") or storage / "state.sqlite3"),
        host=env.get("NIXERY_HOST") or "127.0.0.1",
        port=env.integer("PORT", 8080, 1, 65535),
        build_workers=env.integer("NIXERY_BUILD_WORKERS", 2, 1, 64),
        max_queued=env.integer("NIXERY_MAX_QUEUED_BUILDS", 32, 0, 100_000),
        connections=ConnectionLimits(
            threads=threads,
            connections=env.integer("NIXERY_MAX_CONNECTIONS", 1000, 10, 100_000),
            per_client=env.integer("NIXERY_CLIENT_CONNECTIONS", 32, 1, 100_000),
            header_timeout=env.seconds("NIXERY_HEADER_TIMEOUT", 10.0, 1.0, 600.0),
            idle_timeout=env.seconds("NIXERY_IDLE_TIMEOUT", 30.0, 1.0, 3600.0),
        ),
        waiters=wait_limits(env, "NIXERY_SERVER_THREADS", threads),
    )
