"""The registry protocol over HTTP: the pull side of the OCI distribution spec.

A Flask app around an ImageService; both entry points (local mode, the Cloud Function) serve
this same app. Every error under ``/v2/`` is a JSON error body with a registry error code,
never an HTML page or a traceback.

``tags/list`` answers for every valid name what the source can enumerate (``latest``, and a
git source's branches and tags): each valid name is a potential image, whether its packages
exist is only known once its manifest is asked for (an evaluation), and the other tags a
source accepts (other channels, any commit) cannot be enumerated.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from flask import Flask, Response, g, redirect, request, send_from_directory
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.wsgi import wrap_file

from .errors import (
    NameUnknown,
    PaginationNumberInvalid,
    RangeInvalid,
    RegistryError,
    Unsupported,
)
from .images import ImageService
from .names import check_digest, parse_name

log = logging.getLogger(__name__)

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_READ = {"GET", "HEAD"}
_ALLOW = ", ".join(sorted(_READ))
# More digits than any real page size; also keeps int() far from its 4300-digit limit.
_PAGE_SIZE = re.compile(r"[0-9]{1,9}")

_UPLOADS = re.compile(r"(?P<name>.+)/blobs/uploads(?:/.*)?")
_MANIFEST = re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_BLOB = re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_TAGS = re.compile(r"(?P<name>.+)/tags/list")


def create_app(service: ImageService, web_dir: Path | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)

    # strict_slashes=False: "/v2" is the ping too, rather than a redirect with an HTML body.
    @app.route("/v2/", methods=_ALL_METHODS, strict_slashes=False)
    def ping() -> Response:
        _only_read()
        return Response(b"{}", content_type="application/json")

    @app.route("/v2/<path:path>", methods=_ALL_METHODS)
    def dispatch(path: str) -> Response:
        # A malformed name or digest is reported before the method is refused, whatever the
        # method: the request is wrong either way, and conformance tests expect the 400.
        if match := _UPLOADS.fullmatch(path):
            parse_name(match["name"])
            raise Unsupported(
                "this registry builds its images; pushing is not supported",
                headers={"Allow": ""},
            )
        if match := _MANIFEST.fullmatch(path):
            parse_name(match["name"])
            if ":" in match["reference"]:
                check_digest(match["reference"])
            _only_read()
            return _manifest(service, match["name"], match["reference"])
        if match := _BLOB.fullmatch(path):
            parse_name(match["name"])
            check_digest(match["digest"])
            _only_read()
            return _blob(service, match["name"], match["digest"])
        if match := _TAGS.fullmatch(path):
            parse_name(match["name"])
            _only_read()
            return _tags(service, match["name"])
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
        if not _is_api(request.path):
            return e
        # Werkzeug's own headers matter: Allow on a 405, Content-Range on a 416.
        headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}
        if e.code == 405:  # a method no route knows; werkzeug's Allow lists every route's
            headers["Allow"] = _ALLOW
        error_type = {405: Unsupported, 416: RangeInvalid}.get(e.code or 500, RegistryError)
        wrapped = error_type(e.description or e.name, headers=headers)
        wrapped.status = e.code or 500
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
        if _is_api(request.path):
            response.headers[API_VERSION[0]] = API_VERSION[1]
        ms = (time.perf_counter() - g.started) * 1000
        log.info(
            "%s %s %d %.1fms", request.method, request.path, response.status_code, ms,
            extra={"http_method": request.method, "path": request.path,
                   "status": response.status_code, "ms": round(ms, 1)},
        )  # fmt: skip
        return response

    return app


def _is_api(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _only_read() -> None:
    """Refuses every method but GET and HEAD: nothing can be pushed or deleted here."""
    if request.method not in _READ:
        raise Unsupported(
            f"{request.method} is not supported: this registry is read-only",
            headers={"Allow": _ALLOW},
        )


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


def _tags(service: ImageService, name: str) -> Response:
    tags, next_last = page_tags(service.tags(name), request.args.get("n"), request.args.get("last"))
    response = Response(json.dumps({"name": name, "tags": tags}), content_type="application/json")
    if next_last is not None:
        query = urllib.parse.urlencode({"last": next_last, "n": len(tags)})
        response.headers["Link"] = f'</v2/{name}/tags/list?{query}>; rel="next"'
    return response


def page_tags(tags: Iterable[str], n: str | None, last: str | None) -> tuple[list[str], str | None]:
    """One page of a tag list, as the spec pages it, and the ``last`` of the next page if any.

    Tags sort lexically; ``last`` excludes itself and what sorts before it; ``n`` caps the
    count, ``n=0`` being an empty page with no next one; ``?n=`` is no ``n``, as in the
    reference registry."""
    after = [tag for tag in sorted(tags) if not last or tag > last]
    if not n:
        return after, None
    if not _PAGE_SIZE.fullmatch(n):
        raise PaginationNumberInvalid("n must be a non-negative integer", {"n": n[:100]})
    page = after[: int(n)]
    return page, page[-1] if page and len(page) < len(after) else None
