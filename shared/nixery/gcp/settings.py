"""Google Cloud mode's own configuration, beside the common one in ``nixery.config``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import config as base
from ..config import ConfigError, env_seconds

Role = Literal["registry", "builder"]

# Local scratch space: layers on their way to GCS, source checkouts.
SCRATCH = Path(tempfile.gettempdir()) / "nixery"


@dataclass(frozen=True)
class GcpConfig:
    project: str
    database: str
    prefix: str
    tasks_queue: str | None  # projects/P/locations/L/queues/Q
    builder_url: str | None
    tasks_service_account: str | None
    tasks_emulator: str | None
    url_ttl: float
    lease: float
    iam_endpoint: str
    storage_public_url: str | None


def load_gcp(role: Role, env: Mapping[str, str] = os.environ) -> GcpConfig:
    def get(name: str) -> str | None:
        return env.get(name) or None

    def need(name: str) -> str:
        value = get(name)
        if value is None:
            raise ConfigError(f"{name} must be set for the {role}")
        return value

    project = get("GOOGLE_CLOUD_PROJECT") or need("GCP_PROJECT")
    queue = None
    if role == "registry":
        location, name = need("NIXERY_TASKS_LOCATION"), need("NIXERY_TASKS_QUEUE")
        queue = f"projects/{project}/locations/{location}/queues/{name}"
        url = need("NIXERY_BUILDER_URL")
        if not url.startswith(("https://", "http://")):
            raise ConfigError("NIXERY_BUILDER_URL must be an http(s) URL")
    url_ttl = env_seconds(env, "NIXERY_URL_TTL", 300.0)
    if not 1 <= url_ttl <= 7 * 24 * 3600:
        raise ConfigError("NIXERY_URL_TTL must be between 1 second and 7 days (V4 signing)")
    lease = env_seconds(env, "NIXERY_LEASE_TTL", 60.0)
    if lease < 3:
        raise ConfigError("NIXERY_LEASE_TTL must be at least 3 seconds")
    emulator = get("STORAGE_EMULATOR_HOST")
    return GcpConfig(
        project=project,
        database=get("NIXERY_FIRESTORE_DATABASE") or "(default)",
        prefix=get("NIXERY_FIRESTORE_PREFIX") or "nixery_",
        tasks_queue=queue,
        builder_url=get("NIXERY_BUILDER_URL"),
        tasks_service_account=get("NIXERY_TASKS_SERVICE_ACCOUNT"),
        tasks_emulator=get("NIXERY_TASKS_EMULATOR_HOST"),
        url_ttl=url_ttl,
        lease=lease,
        iam_endpoint=get("NIXERY_IAM_ENDPOINT") or "https://iamcredentials.googleapis.com",
        # Signed URLs must name the host clients reach: the emulator's, when there is one.
        storage_public_url=emulator,
    )


def load_config(role: Role, env: Mapping[str, str] = os.environ) -> tuple[base.Config, GcpConfig]:
    """Both parts of a service's configuration. Cheap (no Google Cloud imports), so that the
    registry function can check it when it starts rather than on its first request."""
    env = {**env, "NIXERY_STORAGE_BACKEND": "gcs"}
    if not env.get("NIXERY_CACHE_DIR"):
        env["NIXERY_CACHE_DIR"] = str(SCRATCH / "sources")
    return base.load(env, runs_nix=role == "builder"), load_gcp(role, env)
