"""Google Cloud mode's two services, assembled from the environment.

The registry function answers the protocol from Firestore and GCS and enqueues builds; the
builder service runs them. Both use the same core as local mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask
from google.cloud import firestore, storage, tasks_v2

from .. import config as base
from ..builder import Builder
from ..images import ImageService
from ..registry import create_app
from ..sources import configured_source
from .firestore import FirestoreState
from .gcs import GcsBlobStore
from .settings import SCRATCH, GcpConfig, load_config
from .signing import runtime_signer
from .tasks import TaskBuildQueue, TaskQueue
from .worker import BuildWorker, create_builder_app


def _state(gcp: GcpConfig) -> FirestoreState:
    client = firestore.Client(project=gcp.project, database=gcp.database)
    return FirestoreState(client, gcp.prefix)


def _tasks_client(gcp: GcpConfig) -> tasks_v2.CloudTasksClient:
    if gcp.tasks_emulator:
        import grpc
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcTransport,
        )

        channel = grpc.insecure_channel(gcp.tasks_emulator)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    return tasks_v2.CloudTasksClient()


def _bucket(cfg: base.Config, gcp: GcpConfig) -> storage.Bucket:
    assert cfg.gcs_bucket is not None
    return storage.Client(project=gcp.project).bucket(cfg.gcs_bucket)


def registry_app(env: Mapping[str, str] = os.environ) -> Flask:
    cfg, gcp = load_config("registry", env)
    state = _state(gcp)
    blobs = GcsBlobStore(
        _bucket(cfg, gcp),
        SCRATCH,
        signer=runtime_signer(gcp.iam_endpoint),
        url_ttl=gcp.url_ttl,
        public_endpoint=gcp.storage_public_url,
    )
    assert gcp.tasks_queue is not None and gcp.builder_url is not None
    tasks = TaskQueue(
        _tasks_client(gcp), gcp.tasks_queue, gcp.builder_url, gcp.tasks_service_account
    )
    service = ImageService(
        source=configured_source(cfg),
        state=state,
        blobs=blobs,
        builds=TaskBuildQueue(state, tasks, pickup=gcp.lease),
        wait=cfg.build_wait,
        failure_ttl=cfg.failure_ttl,
    )
    return create_app(service, cfg.web_dir)


def builder_app(env: Mapping[str, str] = os.environ) -> Flask:
    cfg, gcp = load_config("builder", env)
    state = _state(gcp)
    blobs = GcsBlobStore(_bucket(cfg, gcp), SCRATCH / "layers", signer=None, url_ttl=60)
    builder = Builder.from_config(cfg, source=configured_source(cfg), blobs=blobs, state=state)
    return create_builder_app(BuildWorker(builder, state, gcp.lease))
