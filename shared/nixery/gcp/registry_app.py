"""The registry function's app: the protocol, answered from Firestore and GCS.

Loads no part of the build pipeline (Nix, layering, archives): a miss only enqueues a job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from nixery.gcp.clients import bucket, firestore_database, tasks_client
from nixery.gcp.firestore_limiter import FirestoreLimiter
from nixery.gcp.firestore_state import FirestoreBuildRecords
from nixery.gcp.gcs_blob_store import GcsBlobStore
from nixery.gcp.settings import registry_settings
from nixery.gcp.signed_urls import runtime_signer
from nixery.gcp.task_queue import CloudTasksEnqueuer, TaskBuildQueue
from nixery.http.protocol import create_app
from nixery.service.catalog import Catalog
from nixery.service.images import ImageService
from nixery.service.waiters import Waiters
from nixery.sources import open_source


def registry_app(env: Mapping[str, str] = os.environ) -> Flask:
    settings = registry_settings(env)
    database = firestore_database(settings.gcp)
    state = database.ports()
    source = open_source(settings.source)
    images = state.images
    blobs = GcsBlobStore(
        bucket(settings.gcp),
        # A public mirror signs nothing, so it needs no signing permission either.
        signer=None if settings.blob_url else runtime_signer(settings.iam_endpoint),
        url_ttl=settings.url_ttl,
        public_endpoint=settings.storage_public_url,
        blob_url=settings.blob_url,
        timeout=settings.gcp.backend_timeout,
    )
    tasks = CloudTasksEnqueuer(
        tasks_client(settings.tasks_emulator),
        settings.tasks_queue,
        settings.builder_url,
        settings.tasks_service_account,
        settings.build_deadline,
        timeout=settings.gcp.backend_timeout,
    )
    service = ImageService(
        source=source,
        images=images,
        blobs=blobs,
        builds=TaskBuildQueue(
            images,
            FirestoreBuildRecords(database),
            tasks,
            pickup=settings.pickup,
            max_building=settings.max_building,
            lease=settings.gcp.lease,
            failure_ttl=settings.serve.failure_ttl,
        ),
        wait=settings.serve.build_wait,
        failure_ttl=settings.serve.failure_ttl,
        limiter=(
            FirestoreLimiter(
                database.client, settings.gcp.prefix, rate, timeout=settings.gcp.backend_timeout
            )
            if (rate := settings.serve.client_builds)
            else None
        ),
        reports=state.reports,
        waiters=Waiters(settings.waiters),
    )
    return create_app(service, settings.serve, Catalog.of(source, state, settings.build_deadline))
