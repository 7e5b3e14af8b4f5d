"""Local mode: registry and builder in one process, on files, SQLite and threads."""

from __future__ import annotations

import logging
import time

from flask import Flask

from nixery.config import LocalSettings
from nixery.http.protocol import create_app
from nixery.local.file_blob_store import FileBlobStore
from nixery.local.http_server import create_server
from nixery.local.memory_limiter import MemoryLimiter
from nixery.local.sqlite_state import SqliteDatabase
from nixery.local.thread_queue import ThreadBuildQueue
from nixery.nix.popularity import load_popularity
from nixery.nix.runner import STORAGE, check_nix_version, report_sandbox
from nixery.pipeline.builder import Builder
from nixery.ports import Source, StatePorts
from nixery.records import BuildReport
from nixery.service.catalog import Catalog
from nixery.service.images import ImageService
from nixery.service.waiters import Waiters
from nixery.sources import open_source
from nixery.sources.checkouts import CHECKOUTS

log = logging.getLogger(__name__)


def create_local_app(settings: LocalSettings) -> Flask:
    source = open_source(settings.source)
    state = SqliteDatabase(settings.state_path).ports()
    started = time.time()
    service = local_service(settings, source, state)

    def stopped(report: BuildReport) -> bool:
        """A build from before this process started that none of its threads runs: the
        process that ran it is gone (one process serves a storage path; a `nixery build`
        sharing it, started earlier, reads so until it ends)."""
        return report.started < started and not service.builds.running(report.key)

    catalog = Catalog.of(source, state, settings.build.deadline, stopped)
    return create_app(service, settings.serve, catalog)


def local_service(
    settings: LocalSettings, source: Source | None = None, state: StatePorts | None = None
) -> ImageService:
    """The images of local mode, found or built: what `nixery serve` serves and `nixery
    build` writes to a file."""
    source = source or open_source(settings.source)
    state = state or SqliteDatabase(settings.state_path).ports()
    blobs = FileBlobStore(settings.storage_path)
    blobs.remove_leftovers()
    log.info("building with Nix %s", check_nix_version())
    report_sandbox()
    builder = Builder.from_settings(
        settings.build,
        source=source,
        blobs=blobs,
        state=state,
        popularity=load_popularity(settings.build.popularity_url),
        private={settings.storage_path: STORAGE, settings.source.cache_dir: CHECKOUTS},
    )
    return ImageService(
        source=source,
        images=state.images,
        blobs=blobs,
        builds=ThreadBuildQueue(builder, state.images, settings.build_workers, settings.max_queued),
        wait=settings.serve.build_wait,
        failure_ttl=settings.serve.failure_ttl,
        limiter=MemoryLimiter(rate) if (rate := settings.serve.client_builds) else None,
        reports=state.reports,
        waiters=Waiters(settings.waiters),
    )


def serve(settings: LocalSettings) -> None:
    app = create_local_app(settings)
    log.info(
        "serving on http://%s:%d (blobs and state in %s)",
        settings.host, settings.port, settings.storage_path,
    )  # fmt: skip
    create_server(
        app, settings.host, settings.port, settings.connections, settings.serve.trusted_proxies
    ).run()
