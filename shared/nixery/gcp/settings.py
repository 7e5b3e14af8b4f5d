"""Google Cloud mode's two roles and what each reads, from the shared parts in ``config``.

Cheap to load (no Google Cloud imports), so that the registry function checks its settings
when it starts rather than on its first request.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nixery.config import (
    BuildSettings,
    Env,
    GcSettings,
    ServeSettings,
    SourceSettings,
    WaitLimits,
    build_deadline,
    build_settings,
    check_backend,
    gc_settings,
    serve_settings,
    source_settings,
    wait_limits,
)
from nixery.errors import ConfigError
from nixery.gcp.kms_signer import KEY_VERSION, KMS_ENDPOINT

# Source checkouts: on Cloud Run and Cloud Functions the only writable disk is in memory.
SOURCE_CACHE = Path(tempfile.gettempdir()) / "nixery" / "sources"
# Cloud Tasks' longest dispatch deadline: no build request may outlast it.
MAX_DISPATCH_DEADLINE = 1800.0
# The builder's Nix store, on Cloud Run's in-memory disk: half of the 8 GiB it is deployed
# with (docs/deployment.md), leaving the rest to Nix, Python, archiving and checkouts.
STORE_LIMIT = 4 << 30


@dataclass(frozen=True)
class GcpSettings:
    """What both roles share: the project's Firestore, the bucket, the build lease."""

    project: str
    database: str
    prefix: str  # of the Firestore collections, so that deployments can share a database
    bucket: str
    lease: float  # seconds a builder's claim lasts without a heartbeat
    backend_timeout: float  # seconds a call to Firestore, GCS or Cloud Tasks may take


def gcp_settings(env: Env, role: str) -> GcpSettings:
    check_backend(env, "gcs")
    why = f"for the {role}"
    lease = env.seconds("NIXERY_LEASE_TTL", 60.0, low=3.0)
    return GcpSettings(
        project=env.get("GOOGLE_CLOUD_PROJECT") or env.need("GCP_PROJECT", why),
        database=env.get("NIXERY_FIRESTORE_DATABASE") or "(default)",
        prefix=env.get("NIXERY_FIRESTORE_PREFIX") or "nixery_",
        bucket=env.need("GCS_BUCKET", why),
        lease=lease,
        # Under the seconds a client waits for an answer; long enough for a contended
        # Firestore transaction, whose lock waits are a few seconds.
        backend_timeout=env.seconds("NIXERY_BACKEND_TIMEOUT", 10.0, low=1.0, high=120.0),
    )


@dataclass(frozen=True)
class RegistrySettings:
    source: SourceSettings
    serve: ServeSettings
    gcp: GcpSettings
    tasks_queue: str  # projects/P/locations/L/queues/Q
    builder_url: str
    tasks_service_account: str | None  # signs the tasks' OIDC tokens for the builder
    tasks_emulator: str | None
    url_ttl: float
    function_timeout: float  # the platform's request timeout, as deployed
    pickup: float  # seconds a queued build may wait for a builder before it is enqueued again
    build_deadline: float  # the tasks' dispatch deadline: what one build may take
    iam_endpoint: str
    storage_public_url: str | None  # the host signed URLs name, where it is not Google's
    blob_url: str | None  # a public mirror's base URL of blobs, in place of signed URLs
    max_building: int | None  # builds under way (running or queued) before new ones wait
    waiters: WaitLimits  # per instance: each waiting request holds one of its THREADS


def registry_settings(environ: Mapping[str, str] = os.environ) -> RegistrySettings:
    env = Env(environ)
    why = "for the registry"
    gcp = gcp_settings(env, "registry")
    location = env.need("NIXERY_TASKS_LOCATION", why)
    queue = env.need("NIXERY_TASKS_QUEUE", why)
    env.need("NIXERY_BUILDER_URL", why)
    # Google's front end appends the address of the client it serves to X-Forwarded-For.
    serve = serve_settings(env, trusted_proxies=1, instances=2)
    # A request cut off by the platform gets a bare 5xx; one that stops waiting first gets a
    # 503 with Retry-After that clients understand, so the wait must end with time to answer.
    # The functions runtime passes its timeout as CLOUD_RUN_TIMEOUT_SECONDS (functions-framework
    # reads it too); elsewhere the deployment says it.
    timeout_from = "CLOUD_RUN_TIMEOUT_SECONDS"
    timeout = env.seconds(timeout_from, 0.0, low=0.0, high=3600.0)
    if not timeout:
        timeout_from = "NIXERY_FUNCTION_TIMEOUT"
        timeout = env.seconds(timeout_from, 3600.0, low=1.0, high=3600.0)
    if serve.build_wait > timeout - 30:
        raise ConfigError(
            f"NIXERY_BUILD_WAIT ({serve.build_wait:g} s) must be at least 30 s shorter than "
            f"{timeout_from} ({timeout:g} s), the function's request timeout"
        )
    # functions-framework serves with THREADS threads (its default: four per CPU); the
    # deployment sets it to the instance's request concurrency.
    threads = env.integer("THREADS", (os.cpu_count() or 1) * 4, 2, 1000)
    emulator = env.get("NIXERY_TASKS_EMULATOR_HOST")
    if not emulator:
        # Tasks without an OIDC token could only reach a builder open to everyone.
        env.need("NIXERY_TASKS_SERVICE_ACCOUNT", "so that the tasks carry an OIDC token")
    return RegistrySettings(
        source=source_settings(env, SOURCE_CACHE),
        serve=serve,
        gcp=gcp,
        tasks_queue=f"projects/{gcp.project}/locations/{location}/queues/{queue}",
        builder_url=env.url("NIXERY_BUILDER_URL", ""),
        tasks_service_account=env.get("NIXERY_TASKS_SERVICE_ACCOUNT"),
        tasks_emulator=emulator,
        # V4 signatures last at most 7 days.
        url_ttl=env.seconds("NIXERY_URL_TTL", 300.0, low=1.0, high=7 * 24 * 3600.0),
        function_timeout=timeout,
        pickup=env.seconds("NIXERY_PICKUP_WAIT", 300.0, low=10.0),
        build_deadline=build_deadline(env, MAX_DISPATCH_DEADLINE),
        iam_endpoint=env.url("NIXERY_IAM_ENDPOINT", "https://iamcredentials.googleapis.com"),
        storage_public_url=env.get("STORAGE_EMULATOR_HOST"),
        blob_url=env.url("NIXERY_BLOB_URL", "") if env.get("NIXERY_BLOB_URL") else None,
        max_building=env.integer("NIXERY_MAX_QUEUED_BUILDS", 0, 0, 1_000_000) or None,
        waiters=wait_limits(env, "THREADS", threads),
    )


@dataclass(frozen=True)
class Backoff:
    """The Cloud Tasks queue's retry schedule (terraform/tasks.tf's retry_config): a build
    given back is held until the queue's next retry is due, so that no pull enqueues it a
    second time meanwhile."""

    least: float = 10.0
    most: float = 300.0
    doublings: int = 4

    def before_retry(self, retries: int) -> float:
        """Seconds the queue waits after a delivery that had ``retries`` retries before it
        (X-CloudTasks-TaskRetryCount): doubling ``doublings`` times from ``least``, then
        growing by the last doubled step, never over ``most``."""
        doubled = min(retries, self.doublings)
        step = self.least * float(1 << doubled)
        return min(self.most, step * (1 + max(0, retries - self.doublings)))


QUEUE_BACKOFF = Backoff()  # terraform/tasks.tf's


@dataclass(frozen=True)
class BuilderSettings:
    source: SourceSettings
    build: BuildSettings
    gcp: GcpSettings
    backoff: Backoff = QUEUE_BACKOFF
    kms_key: str | None = None  # the Cloud KMS key version manifests are signed with
    kms_endpoint: str = KMS_ENDPOINT


def builder_settings(environ: Mapping[str, str] = os.environ) -> BuilderSettings:
    env = Env(environ)
    build = build_settings(env, MAX_DISPATCH_DEADLINE, store_limit=STORE_LIMIT)
    gcp = gcp_settings(env, "builder")
    if gcp.lease >= build.deadline / 2:
        # A heartbeat renews the lease every third of it; a lease near the deadline would
        # leave a dead builder's build waiting about as long as the build itself.
        raise ConfigError(
            f"NIXERY_LEASE_TTL ({gcp.lease:g} s) must be under half of "
            f"NIXERY_BUILD_DEADLINE ({build.deadline:g} s)"
        )
    kms_key = env.words("NIXERY_SIGNING_KMS_KEY", KEY_VERSION)
    if kms_key and build.signing_key:
        raise ConfigError("set one of NIXERY_SIGNING_KEY and NIXERY_SIGNING_KMS_KEY")
    return BuilderSettings(
        source=source_settings(env, SOURCE_CACHE),
        build=build,
        gcp=gcp,
        kms_key=kms_key[0] if kms_key else None,
        kms_endpoint=env.url("NIXERY_KMS_ENDPOINT", KMS_ENDPOINT),
        backoff=backoff_settings(env),
    )


def backoff_settings(env: Env) -> Backoff:
    least = env.seconds("NIXERY_TASKS_MIN_BACKOFF", Backoff.least, low=0.0)
    most = env.seconds("NIXERY_TASKS_MAX_BACKOFF", Backoff.most, low=0.0)
    if most < least:
        raise ConfigError(
            f"NIXERY_TASKS_MAX_BACKOFF ({most:g} s) must be at least "
            f"NIXERY_TASKS_MIN_BACKOFF ({least:g} s)"
        )
    return Backoff(least, most, env.integer("NIXERY_TASKS_MAX_DOUBLINGS", Backoff.doublings, 0, 16))


@dataclass(frozen=True)
class CollectorSettings:
    """`nixery gc` against Firestore and GCS (the deployment's scheduled job)."""

    gc: GcSettings
    gcp: GcpSettings


def collector_settings(
    environ: Mapping[str, str] = os.environ, days: float | None = None
) -> CollectorSettings:
    env = Env(environ)
    return CollectorSettings(gc=gc_settings(env, days), gcp=gcp_settings(env, "collector"))
