"""Google Cloud mode's two services, assembled from the environment.

The registry function answers the protocol from Firestore and GCS and enqueues builds; the
builder service runs them. Both use the same core as local mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from flask import Flask
from google.cloud import firestore, storage, tasks_v2

from .. import config as base
from ..builder import Builder
from ..images import ImageService
from ..nix import Nix
from ..popularity import load_popularity
from ..registry import create_app
from ..sources import Source, open_source
from .firestore import FirestoreState
from .gcs import GcsBlobStore
from .settings import SCRATCH, GcpConfig, load_config
from .signing import runtime_signer
from .tasks import TaskBuildQueue, TaskQueue
from .worker import BuildWorker, create_builder_app


def _source(cfg: base.Config) -> Source:
    return open_source(
        pkgs_path=cfg.pkgs_path,
        pkgs_repo=cfg.pkgs_repo,
        channel=cfg.channel,
        cache_dir=cfg.cache_dir,
        channel_url=cfg.channel_url,
        archive_url=cfg.archive_url,
        ttl=cfg.revision_ttl,
    )


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
        source=_source(cfg),
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
    builder = Builder(
        source=_source(cfg),
        nix=Nix(cfg.prepare_image, cfg.nix_timeout),
        blobs=GcsBlobStore(_bucket(cfg, gcp), SCRATCH / "layers", signer=None, url_ttl=60),
        state=state,
        popularity=load_popularity(cfg.popularity_url),
        budget=cfg.layer_budget,
        pool=ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="archive"),
    )
    return create_builder_app(BuildWorker(builder, state, gcp.lease))
