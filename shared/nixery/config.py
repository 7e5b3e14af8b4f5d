"""Configuration from Nixery's environment variables (and ours, prefixed ``NIXERY_``).

Invalid or contradictory settings fail at start, with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The repository's own prepare-image/, used when NIXERY_PREPARE_IMAGE is not set.
_REPO = Path(__file__).resolve().parents[2]


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    storage_backend: str
    storage_path: Path | None
    gcs_bucket: str | None
    port: int
    host: str
    web_dir: Path | None
    channel: str | None
    pkgs_repo: str | None
    pkgs_path: str | None
    channel_url: str
    archive_url: str
    nix_timeout: int
    popularity_url: str | None
    prepare_image: Path
    revision_ttl: float | None
    failure_ttl: float
    build_wait: float
    layer_budget: int
    build_workers: int
    state_path: Path | None
    cache_dir: Path


def env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {value}")
    return value


def env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def load(env: Mapping[str, str] = os.environ, *, runs_nix: bool = True) -> Config:
    """Reads the configuration; ``runs_nix`` is False for the registry function, which
    never runs Nix and so needs no prepare-image/ nor a local package set."""

    def get(name: str) -> str | None:
        return env.get(name) or None

    backend = get("NIXERY_STORAGE_BACKEND") or "filesystem"
    if backend not in ("filesystem", "gcs"):
        raise ConfigError(f"NIXERY_STORAGE_BACKEND must be 'filesystem' or 'gcs', not {backend!r}")
    storage_path = Path(p) if (p := get("STORAGE_PATH")) else None
    if backend == "filesystem" and storage_path is None:
        raise ConfigError("STORAGE_PATH must be set when NIXERY_STORAGE_BACKEND is filesystem")
    if backend == "gcs" and not get("GCS_BUCKET"):
        raise ConfigError("GCS_BUCKET must be set when NIXERY_STORAGE_BACKEND is gcs")
    sources = [n for n in ("NIXERY_CHANNEL", "NIXERY_PKGS_REPO", "NIXERY_PKGS_PATH") if get(n)]
    if len(sources) > 1:
        raise ConfigError(f"set only one of {', '.join(sources)}")
    if (path := get("NIXERY_PKGS_PATH")) and not Path(path, "default.nix").is_file():
        raise ConfigError(f"NIXERY_PKGS_PATH: no default.nix in {path}")
    prepare_image = Path(get("NIXERY_PREPARE_IMAGE") or _REPO / "prepare-image")
    if runs_nix and not (prepare_image / "default.nix").is_file():
        raise ConfigError(f"NIXERY_PREPARE_IMAGE: no default.nix in {prepare_image}")
    web_dir = get("WEB_DIR")
    default_state = storage_path / "state.sqlite3" if storage_path else None
    default_cache = (storage_path or Path("/tmp/nixery")) / "sources"
    return Config(
        storage_backend=backend,
        storage_path=storage_path,
        gcs_bucket=get("GCS_BUCKET"),
        port=env_int(env, "PORT", 8080, 1, 65535),
        host=get("NIXERY_HOST") or "127.0.0.1",
        web_dir=Path(web_dir) if web_dir else (_REPO / "web" if (_REPO / "web").is_dir() else None),
        channel=get("NIXERY_CHANNEL"),
        pkgs_repo=get("NIXERY_PKGS_REPO"),
        pkgs_path=path,
        channel_url=get("NIXERY_CHANNEL_URL") or "https://channels.nixos.org",
        archive_url=get("NIXERY_ARCHIVE_URL") or "https://github.com/NixOS/nixpkgs/archive",
        nix_timeout=env_int(env, "NIX_TIMEOUT", 60, 1, 86400),
        popularity_url=get("NIX_POPULARITY_URL"),
        prepare_image=prepare_image,
        # Unset: each source kind's own default.
        revision_ttl=env_seconds(env, "NIXERY_REVISION_TTL", 0.0)
        if get("NIXERY_REVISION_TTL")
        else None,
        failure_ttl=env_seconds(env, "NIXERY_FAILURE_TTL", 300.0),
        build_wait=env_seconds(env, "NIXERY_BUILD_WAIT", 600.0),
        layer_budget=env_int(env, "NIXERY_LAYER_BUDGET", 100, 2, 125),
        build_workers=env_int(env, "NIXERY_BUILD_WORKERS", 2, 1, 64),
        state_path=Path(p) if (p := get("NIXERY_STATE_PATH")) else default_state,
        cache_dir=Path(p) if (p := get("NIXERY_CACHE_DIR")) else default_cache,
    )
