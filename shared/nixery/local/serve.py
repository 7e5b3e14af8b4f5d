"""Local mode: registry and builder in one process, on files, SQLite and threads."""

from __future__ import annotations

import logging

import waitress
from flask import Flask
from waitress.channel import HTTPChannel

from ..builder import Builder
from ..config import Config
from ..images import ImageService
from ..registry import create_app
from ..sources import configured_source
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


def create_local_app(config: Config) -> Flask:
    assert config.storage_path is not None and config.state_path is not None
    source = configured_source(config)
    blobs = FileBlobStore(config.storage_path)
    for leftover in blobs.scratch.iterdir():  # from a process that died mid-build
        leftover.unlink()
    state = SqliteState(config.state_path)
    builder = Builder.from_config(config, source=source, blobs=blobs, state=state)
    service = ImageService(
        source=source,
        state=state,
        blobs=blobs,
        builds=ThreadBuildQueue(builder, config.build_workers),
        wait=config.build_wait,
        failure_ttl=config.failure_ttl,
    )
    return create_app(service, config.web_dir)


def serve(config: Config) -> None:
    app = create_local_app(config)
    log.info(
        "serving on http://%s:%d (blobs and state in %s)",
        config.host, config.port, config.storage_path,
    )  # fmt: skip
    server = waitress.create_server(
        app, host=config.host, port=config.port, threads=SERVER_THREADS, ident="nixery"
    )
    server.channel_class = _PlainHttpChannel  # type: ignore[union-attr]
    server.run()
