"""The builder service's app: runs the build tasks that Cloud Tasks delivers.

A delivery first claims the build's lease. A build that finished already, or that another
builder holds a live lease on, is answered at once (2xx and 503 respectively, so Cloud Tasks
forgets the task or comes back later). While it builds, a heartbeat keeps the lease; if this
process dies the lease lapses and the next delivery or request takes the build over.
Permanent failures are recorded and answered 2xx; anything else is answered 500 for a retry.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Mapping

from flask import Flask, Response, request

from nixery.gcp.clients import bucket, firestore_database
from nixery.gcp.firestore_state import FirestoreBuildRecords
from nixery.gcp.gcs_blob_store import GcsBlobStore
from nixery.gcp.kms_signer import KmsSigner
from nixery.gcp.settings import builder_settings
from nixery.gcp.signed_urls import runtime_token
from nixery.job import BuildJob
from nixery.logs import BuildLog
from nixery.nix.popularity import load_popularity
from nixery.nix.runner import check_nix_version, report_sandbox
from nixery.pipeline.builder import Builder
from nixery.sources import open_source
from nixery.sources.checkouts import CHECKOUTS

log = logging.getLogger(__name__)


class BuildWorker:
    def __init__(self, builder: Builder, records: FirestoreBuildRecords, lease: float) -> None:
        self.builder = builder
        self.records = records
        self.lease = lease
        self.owner = f"builder-{uuid.uuid4().hex[:12]}"

    def handle(self, job: BuildJob) -> tuple[int, str]:
        claim = self.records.claim(job, self.owner, self.lease)
        if claim == "done":
            return 200, "already built"
        if claim == "busy":
            return 503, "another builder holds the lease"
        stop = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(job.key, stop), daemon=True)
        heartbeat.start()
        try:
            self.builder.run(job)
        except Exception:
            BuildLog(log, job.key).exception("failed, to be retried")
            failed = True
        else:
            failed = False
        finally:
            stop.set()
            heartbeat.join()
        if failed:
            # Only once the heartbeat has stopped, so it cannot renew what is given up.
            self.records.release(job.key, self.owner)
            return 500, "build failed; it will be retried"
        return 200, "built"

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
        status, message = worker.handle(job)
        return Response(message, status=status)

    @app.get("/healthz")
    def health() -> str:
        return "ok"

    return app


def builder_app(env: Mapping[str, str] = os.environ) -> Flask:
    settings = builder_settings(env)
    log.info("building with Nix %s", check_nix_version())
    report_sandbox()
    database = firestore_database(settings.gcp)
    builder = Builder.from_settings(
        settings.build,
        source=open_source(settings.source),
        blobs=GcsBlobStore(bucket(settings.gcp), signer=None, url_ttl=60),
        state=database.ports(),
        popularity=load_popularity(settings.build.popularity_url),
        signer=KmsSigner(settings.kms_key, runtime_token(), settings.kms_endpoint)
        if settings.kms_key
        else None,
        private={settings.source.cache_dir: CHECKOUTS},
    )
    return create_builder_app(
        BuildWorker(builder, FirestoreBuildRecords(database), settings.gcp.lease)
    )
