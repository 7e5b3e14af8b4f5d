"""Cloud Function entry point: the registry protocol, answered from Firestore and GCS.

Docker pings ``/v2/`` with a 15 s timeout, so the ping is answered before anything heavy is
imported; the Google Cloud clients load on the first real request, once per instance.
"""

from __future__ import annotations

import threading

import functions_framework
from flask import Flask, Request, Response

from nixery.gcp.settings import registry_settings

# A missing or bad setting stops the function here, naming it.
_public = registry_settings().serve.auth is None
_app: Flask | None = None
_lock = threading.Lock()


def _registry() -> Flask:
    """The app, made once; a request after that takes no lock."""
    global _app
    if _app is not None:
        return _app
    with _lock:
        if _app is None:
            from nixery import logs
            from nixery.gcp.registry_app import registry_app

            logs.setup()
            _app = registry_app()
    return _app


@functions_framework.http
def registry(request: Request) -> Response:
    if _public and request.path == "/v2/" and request.method in ("GET", "HEAD"):
        return Response(
            b"{}",
            content_type="application/json",
            headers={"Docker-Distribution-API-Version": "registry/2.0"},
        )
    return Response.from_app(_registry().wsgi_app, request.environ)
