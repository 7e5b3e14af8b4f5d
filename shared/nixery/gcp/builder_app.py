"""The builder service's app: runs the build tasks that Cloud Tasks delivers.

A delivery first claims the build's lease. A build that finished already, or that another
builder holds a live lease on, is answered at once (2xx and 503 respectively, so Cloud Tasks
forgets the task or comes back later). While it builds, a heartbeat keeps the lease; if this
process dies the lease lapses and the next delivery or request takes the build over.
Permanent failures are recorded and answered 2xx. A passing one (a service down or slow) is
answered 503 with Retry-After once the call that met it gave up (each call to a service
within NIXERY_BACKEND_TIMEOUT; a build's step may make a few), and anything else 500: either
way the build goes back to the queue with its cause, held until the queue's retry is due,
for the waiting requests to answer at once, and Cloud Tasks delivers it again. The
``MAX_RELEASES``th such answer in a row records a failure instead.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from collections.abc import Mapping

from flask import Flask, Response, request

from nixery.errors import Transient, interruption
from nixery.gcp.clients import bucket, firestore_database
from nixery.gcp.firestore_state import FirestoreBuildRecords
from nixery.gcp.gcs_blob_store import GcsBlobStore
from nixery.gcp.kms_signer import KmsSigner
from nixery.gcp.settings import QUEUE_BACKOFF, Backoff, builder_settings
from nixery.gcp.signed_urls import runtime_token
from nixery.http.protocol import RETRY_AFTER
from nixery.job import BuildJob
from nixery.logs import BuildLog
from nixery.nix.popularity import load_popularity
from nixery.nix.runner import check_nix_version, report_sandbox
from nixery.pipeline.builder import Builder
from nixery.sources import open_source
from nixery.sources.checkouts import CHECKOUTS

log = logging.getLogger(__name__)


class BuildWorker:
    def __init__(
        self,
        builder: Builder,
        records: FirestoreBuildRecords,
        lease: float,
        backoff: Backoff = QUEUE_BACKOFF,
    ) -> None:
        """``backoff``: the queue's retry schedule, which a build given back is held for."""
        self.builder = builder
        self.records = records
        self.lease = lease
        self.backoff = backoff
        self.owner = f"builder-{uuid.uuid4().hex[:12]}"

    def handle(
        self, job: BuildJob, enqueued: float | None = None, retries: int = 0
    ) -> tuple[int, str]:
        """The task's answer: 2xx when it is done with, 503 (with Retry-After) for a passing
        cause, 500 for a bug; Cloud Tasks delivers it again after either of the last two.
        ``enqueued``: when the queue took the task, for the build's report; ``retries``: the
        deliveries before this one (X-CloudTasks-TaskRetryCount)."""
        try:
            claim = self.records.claim(job, self.owner, self.lease)
        except Transient as e:
            BuildLog(log, job.key).warning("not claimed, to be retried: %s", e.message)
            return 503, e.message
        if claim == "done":
            return 200, "already built"
        if claim == "busy":
            return 503, "another builder holds the lease"
        stop = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(job.key, stop), daemon=True)
        heartbeat.start()
        answer: tuple[int, str] = (200, "built")
        try:
            self.builder.run(job, enqueued)
        except Transient as e:
            # The log has the error; the record, which every waiting client is answered
            # from, only its kind's phrase (the text may hold an upload URL, say).
            BuildLog(log, job.key).warning("%s; to be retried", e.message)
            answer = (503, interruption(e))
        except Exception as e:
            BuildLog(log, job.key).exception("failed, to be retried")
            answer = (500, interruption(e))
        finally:
            stop.set()
            heartbeat.join()
        if answer[0] != 200:
            # Only once the heartbeat has stopped, so it cannot renew what is given up. The
            # queue retries the task; until then the requests that wait for the build say why
            # (a lease's time after the retry is due, for it to be claimed).
            hold = self.backoff.before_retry(retries) + self.lease
            try:
                self.records.release(job.key, self.owner, answer[1], hold)
            except Transient as e:  # the lease lapses by itself
                BuildLog(log, job.key).warning("the lease is not given back: %s", e.message)
        return answer

    def _heartbeat(self, key: str, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 3):
            if not self.records.renew(key, self.owner, self.lease):
                BuildLog(log, key).warning("lease lost to another builder")
                return


def create_builder_app(worker: BuildWorker) -> Flask:
    app = Flask(__name__)

    @app.post("/")
    def build() -> Response:
        try:
            job = BuildJob.from_dict(request.get_json(force=True, silent=True))
        except ValueError as e:
            # A malformed task can never succeed: 2xx so Cloud Tasks drops it.
            log.error("rejected task: %s", e)
            return Response(f"rejected: {e}", status=202)
        eta = _task_eta(request.headers.get("X-CloudTasks-TaskETA"))
        retries = request.headers.get("X-CloudTasks-TaskRetryCount", "")
        status, message = worker.handle(job, eta, int(retries) if retries.isdigit() else 0)
        if status == 503:
            # Cloud Tasks backs off further on a 503 and weighs its Retry-After.
            return Response(message, status=503, headers={"Retry-After": str(RETRY_AFTER)})
        return Response(message, status=status)

    @app.get("/healthz")
    def health() -> str:
        return "ok"

    return app


def _task_eta(header: str | None) -> float | None:
    """When the task was due (its creation, for ours), as Cloud Tasks says; None without."""
    try:
        eta = float(header or "")
    except ValueError:
        return None
    return eta if math.isfinite(eta) else None


def builder_app(env: Mapping[str, str] = os.environ) -> Flask:
    settings = builder_settings(env)
    log.info("building with Nix %s", check_nix_version())
    report_sandbox()
    database = firestore_database(settings.gcp)
    builder = Builder.from_settings(
        settings.build,
        source=open_source(settings.source),
        blobs=GcsBlobStore(
            bucket(settings.gcp), signer=None, url_ttl=60, timeout=settings.gcp.backend_timeout
        ),
        state=database.ports(),
        popularity=load_popularity(settings.build.popularity_url),
        signer=KmsSigner(settings.kms_key, runtime_token(), settings.kms_endpoint)
        if settings.kms_key
        else None,
        private={settings.source.cache_dir: CHECKOUTS},
    )
    return create_builder_app(
        BuildWorker(builder, FirestoreBuildRecords(database), settings.gcp.lease, settings.backoff)
    )
