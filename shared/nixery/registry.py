"""The registry protocol over HTTP: the pull side of the OCI distribution spec.

A Flask app around an ImageService; both entry points (local mode, the Cloud Function) serve
this same app. Every error under ``/v2/`` is a JSON error body with a registry error code,
never an HTML page or a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from flask import Flask, Response, g, redirect, request, send_from_directory
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.wsgi import wrap_file

from .errors import NameUnknown, RegistryError, Unsupported
from .images import ImageService
from .names import parse_name

log = logging.getLogger(__name__)

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_READ = {"GET", "HEAD"}

_UPLOADS = re.compile(r"(?P<name>.+)/blobs/uploads(?:/.*)?")
_MANIFEST = re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_BLOB = re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_TAGS = re.compile(r"(?P<name>.+)/tags/list")


def create_app(service: ImageService, web_dir: Path | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)

    @app.route("/v2/", methods=_ALL_METHODS)
    def ping() -> Response:
        if request.method not in _READ:
            raise Unsupported("this registry is read-only")
        return Response(b"{}", content_type="application/json")

    @app.route("/v2/<path:path>", methods=_ALL_METHODS)
    def dispatch(path: str) -> Response:
        if _UPLOADS.fullmatch(path):
            raise Unsupported("this registry builds its images; pushing is not supported")
        if request.method not in _READ:
            raise Unsupported(f"{request.method} is not supported: this registry is read-only")
        if match := _MANIFEST.fullmatch(path):
            return _manifest(service, match["name"], match["reference"])
        if match := _BLOB.fullmatch(path):
            return _blob(service, match["name"], match["digest"])
        if match := _TAGS.fullmatch(path):
            return _tags(match["name"])
        raise NameUnknown("no such endpoint", {"path": path[:200]})

    @app.route("/", defaults={"path": "index.html"})
    @app.route("/<path:path>")
    def web(path: str) -> Response:
        if web_dir is None:
            raise NotFound()
        if (web_dir / path).is_dir():
            path = path.rstrip("/") + "/index.html"
        return send_from_directory(web_dir, path)

    @app.errorhandler(RegistryError)
    def registry_error(e: RegistryError) -> Response:
        return _error_response(e)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response | HTTPException:
        if not request.path.startswith("/v2/"):
            return e
        wrapped = RegistryError(e.description or e.name)
        wrapped.status = e.code or 500
        wrapped.code = "UNSUPPORTED" if e.code == 405 else "UNKNOWN"
        return _error_response(wrapped)

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error_response(RegistryError("internal error"))

    @app.before_request
    def started() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def headers(response: Response) -> Response:
        if request.path.startswith("/v2/"):
            response.headers[API_VERSION[0]] = API_VERSION[1]
        ms = (time.perf_counter() - g.started) * 1000
        log.info(
            "%s %s %d %.1fms", request.method, request.path, response.status_code, ms,
            extra={"http_method": request.method, "path": request.path,
                   "status": response.status_code, "ms": round(ms, 1)},
        )  # fmt: skip
        return response

    return app


def _error_response(e: RegistryError) -> Response:
    response = Response(e.body(), status=e.status, content_type="application/json")
    response.headers.update(e.headers)
    return response


def _manifest(service: ImageService, name: str, reference: str) -> Response:
    manifest = service.manifest(name, reference, request.headers.getlist("Accept"))
    response = Response(manifest.body, content_type=manifest.media_type)
    response.headers["Docker-Content-Digest"] = manifest.digest
    return response


def _blob(service: ImageService, name: str, digest: str) -> Response:
    location = service.blob(name, digest)
    if location.url and request.method == "GET":
        response = redirect(location.url, code=307)
    elif request.method == "HEAD":
        response = Response(content_type="application/octet-stream")
        response.content_length = location.size
    else:
        # Built by hand rather than with send_file, which honours Range only for paths.
        body = wrap_file(request.environ, service.blobs.open(digest))
        response = Response(body, content_type="application/octet-stream", direct_passthrough=True)
        response.content_length = location.size
        response.set_etag(digest.partition(":")[2])
        response.cache_control.public = True
        response.cache_control.max_age = 31536000  # content-addressed: never changes
        response = response.make_conditional(
            request.environ, accept_ranges=True, complete_length=location.size
        )
    response.headers["Docker-Content-Digest"] = digest
    return response


def _tags(name: str) -> Response:
    parse_name(name)
    return Response(json.dumps({"name": name, "tags": ["latest"]}), content_type="application/json")
