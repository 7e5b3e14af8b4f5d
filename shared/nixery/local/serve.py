"""Local mode: registry and builder in one process, on files, SQLite and threads."""

from __future__ import annotations

import logging

import waitress
from flask import Flask
from waitress.channel import HTTPChannel

from ..builder import Builder
from ..config import LocalSettings
from ..images import ImageService
from ..nix import check_nix_version, report_sandbox
from ..popularity import load_popularity
from ..registry import create_app
from ..sources import open_source
from .files import FileBlobStore
from .sqlite import SqliteState
from .threads import ThreadBuildQueue

log = logging.getLogger(__name__)

# Each waiting manifest request holds a thread until its build ends.
SERVER_THREADS = 64


class _PlainHttpChannel(HTTPChannel):
    """Answers a TLS handshake at once with a plain-HTTP error, as Go's net/http does.

    skopeo, podman and containerd try HTTPS first even for an insecure registry; an HTTP
    server that waits for a request line makes each of them wait out a 10 s TLS handshake
    timeout before falling back to HTTP.
    """

    _first = True

    def received(self, data: bytes) -> bool:
        if self._first and data:
            self._first = False
            if data[:1] == b"\x16":  # TLS record type: handshake
                self.send(b"HTTP/1.0 400 Bad Request\r\nConnection: close\r\n\r\n")
                self.handle_close()
                return False
        return super().received(data)


def create_local_app(settings: LocalSettings) -> Flask:
    source = open_source(settings.source)
    blobs = FileBlobStore(settings.storage_path)
    blobs.remove_leftovers()
    state = SqliteState(settings.state_path)
    log.info("building with Nix %s", check_nix_version())
    report_sandbox()
    builder = Builder.from_settings(
        settings.build,
        source=source,
        blobs=blobs,
        state=state,
        popularity=load_popularity(settings.build.popularity_url),
    )
    service = ImageService(
        source=source,
        state=state,
        blobs=blobs,
        builds=ThreadBuildQueue(builder, state, settings.build_workers),
        wait=settings.serve.build_wait,
        failure_ttl=settings.serve.failure_ttl,
    )
    return create_app(service, settings.serve.web_dir)


def serve(settings: LocalSettings) -> None:
    app = create_local_app(settings)
    log.info(
        "serving on http://%s:%d (blobs and state in %s)",
        settings.host, settings.port, settings.storage_path,
    )  # fmt: skip
    server = waitress.create_server(  # type: ignore[attr-defined]
        app, host=settings.host, port=settings.port, threads=SERVER_THREADS, ident="nixery"
    )
    server.channel_class = _PlainHttpChannel
    server.run()
