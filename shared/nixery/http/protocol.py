"""The registry protocol over HTTP: the pull side of the OCI distribution spec.

A Flask app around an ImageService; both entry points (local mode, the Cloud Function) serve
this same app. Names and references are parsed here, once. Every error under ``/v2/`` is a
JSON error body with a registry error code, never an HTML page or a traceback: the domain
errors raised anywhere below become a status and a code in one table, ``ERRORS``.

``tags/list`` answers for every valid name what the source can enumerate (``latest``, and a
git source's branches and tags): each valid name is a potential image, whether its packages
exist is only known once its manifest is asked for (an evaluation), and the other tags a
source accepts (other channels, any commit) cannot be enumerated.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, redirect, request, send_from_directory
from werkzeug.datastructures import Authorization
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.http import parse_etags, parse_range_header
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response as BaseResponse
from werkzeug.wsgi import wrap_file

from nixery.config import ServeSettings
from nixery.errors import (
    BuildError,
    ImageTooLarge,
    InvalidDigest,
    InvalidName,
    InvalidPageSize,
    InvalidTag,
    NixeryError,
    Throttled,
    TooManyLogins,
    Transient,
    UnknownBlob,
    UnknownEndpoint,
    UnknownManifest,
    UnknownTag,
    Unsupported,
    UntrustedRevision,
)
from nixery.http import pages
from nixery.http.auth import Auth
from nixery.oci.manifests import OCI_INDEX
from nixery.ports import never
from nixery.request import (
    AMD64,
    MAX_PACKAGES,
    NAME_RE,
    Architecture,
    Digest,
    ImageRequest,
    Tag,
    parse_digest,
    parse_name,
    parse_reference,
)
from nixery.service.catalog import Catalog
from nixery.service.images import Caller, ImageService

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)
# Set in a request's WSGI environ when its login was refused for too many failures: the local
# server then pauses the connection (``local.http_server.THROTTLED_PAUSE``), for this 429 only.
LOGIN_THROTTLED = "nixery.login_throttled"

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_READ = {"GET", "HEAD"}
_ALLOW = ", ".join(sorted(_READ))
# Seconds a client is asked to wait before retrying a transient error.
RETRY_AFTER = 10
# A name of 255 characters and a digest need under 400; anything much longer is abuse. (The
# query string, a tag list's n and last, is bounded by the server's header size.)
MAX_PATH = 2048

# Domain error -> (status, registry error code). The most specific class listed wins.
# Clients retry 502/503/504 and treat other 5xx as final.
ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidName: (400, "NAME_INVALID"),
    InvalidDigest: (400, "DIGEST_INVALID"),
    InvalidPageSize: (400, "PAGINATION_NUMBER_INVALID"),  # the reference registry's code
    InvalidTag: (404, "MANIFEST_UNKNOWN"),  # no manifest can have that reference
    UnknownEndpoint: (404, "NAME_UNKNOWN"),
    UnknownTag: (404, "MANIFEST_UNKNOWN"),
    UntrustedRevision: (404, "MANIFEST_UNKNOWN"),  # as if it did not exist: it is not served
    UnknownManifest: (404, "MANIFEST_UNKNOWN"),
    UnknownBlob: (404, "BLOB_UNKNOWN"),
    Unsupported: (405, "UNSUPPORTED"),
    Throttled: (429, "TOOMANYREQUESTS"),  # too many new builds, or wrong passwords
    ImageTooLarge: (403, "DENIED"),  # this registry's limit, not a failure of the build
    # Unknown packages, failed, timed-out or unevaluable builds: final, and remembered. Not
    # 404: containerd shows nothing of a 404 but "not found", and of other codes their
    # status line, which carries what failed and the build's page (``pages.explain``).
    BuildError: (422, "MANIFEST_UNKNOWN"),
    Transient: (503, "UNAVAILABLE"),
    Exception: (500, "UNKNOWN"),  # our own bugs
}
# Repository names whose parse a registry keeps.
_NAMES = 4096
# More digits than any real page size; also keeps int() far from its 4300-digit limit.
_PAGE_SIZE = re.compile(r"[0-9]{1,9}")

_UPLOADS = re.compile(r"(?P<name>.+)/blobs/uploads(?:/.*)?")
_MANIFEST = re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_BLOB = re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_TAGS = re.compile(r"(?P<name>.+)/tags/list")
_REFERRERS = re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)")
# The environ key under which ``_WarmManifests`` hands the app what its question raised.
_WARM_ERROR = "nixery.warm_error"


def create_app(
    service: ImageService, settings: ServeSettings | None = None, catalog: Catalog | None = None
) -> Flask:
    """The protocol over ``service``; without ``settings``, public, with no web page; with a
    ``catalog``, the pages about builds too."""
    app = Flask(__name__, static_folder=None)
    web_dir = settings.web_dir if settings else None
    max_packages = settings.max_packages if settings else MAX_PACKAGES
    platforms = settings.platforms if settings else (AMD64,)
    auth = Auth(settings.auth) if settings and settings.auth else None
    if auth is None:  # a private registry's pulls prove who asks first, through the app
        app.wsgi_app = _WarmManifests(  # type: ignore[method-assign, assignment]
            service, app.wsgi_app, max_packages, platforms
        )
    if settings and settings.trusted_proxies:
        # The proxies in front append their client's address to X-Forwarded-For (and the
        # scheme to X-Forwarded-Proto): the real client is found that many entries back.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )

    # strict_slashes=False: "/v2" is the ping too, rather than a redirect with an HTML body.
    @app.route("/v2/", methods=_ALL_METHODS, strict_slashes=False)
    def ping() -> Response:
        _only_read()
        return Response(b"{}", content_type="application/json")

    @app.route("/v2/<path:path>", methods=_ALL_METHODS)
    def dispatch(path: str) -> BaseResponse:
        # A malformed name or digest is reported before the method is refused, whatever the
        # method: the request is wrong either way, and conformance tests expect the 400.
        if match := _UPLOADS.fullmatch(path):
            parse_name(match["name"])
            raise Unsupported("this registry builds its images; pushing is not supported", allow="")
        if match := _MANIFEST.fullmatch(path):
            image = parse_name(match["name"], max_packages, platforms)
            reference = parse_reference(match["reference"])
            _only_read()
            if (error := request.environ.get(_WARM_ERROR)) is not None:
                raise error  # the wrapper's question raised it: not asked twice
            return _manifest(service, image, reference)
        if match := _BLOB.fullmatch(path):
            parse_name(match["name"])
            digest = parse_digest(match["digest"])
            _only_read()
            return _blob(service, digest)
        if match := _TAGS.fullmatch(path):
            parse_name(match["name"])
            _only_read()
            return _tags(service, match["name"])
        if match := _REFERRERS.fullmatch(path):
            parse_name(match["name"])
            digest = parse_digest(match["digest"])
            _only_read()
            return _referrers(service, digest)
        raise UnknownEndpoint("no such endpoint", {"path": path[:200]})

    if settings is not None:
        app.config[pages.PUBLIC_URL] = settings.public_url  # failures' replies name it too
    if catalog is not None:
        app.register_blueprint(pages.blueprint(catalog))

    @app.route("/<path:path>")
    def web(path: str) -> Response:
        if web_dir is None:
            raise NotFound()
        if (web_dir / path).is_dir():
            path = path.rstrip("/") + "/index.html"
        return send_from_directory(web_dir, path)

    @app.errorhandler(NixeryError)
    def domain_error(e: NixeryError) -> Response:
        g.unlogged = isinstance(e, TooManyLogins)  # Auth counts them, a line per address
        if g.unlogged:
            request.environ[LOGIN_THROTTLED] = True
        return error_response(e)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response | HTTPException:
        if not _is_api(request.path):
            return e
        # Werkzeug's own headers matter: Allow on a 405, Content-Range on a 416.
        headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}
        if e.code == 405:  # a method no route knows; werkzeug's Allow lists every route's
            headers["Allow"] = _ALLOW
        # 416's code is the reference registry's.
        code = {405: "UNSUPPORTED", 416: "RANGE_INVALID"}.get(e.code or 500, "UNKNOWN")
        return _json_error(e.code or 500, code, e.description or e.name, None, headers)

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(e)

    @app.before_request
    def started() -> Response | None:
        g.started = time.perf_counter()
        if len(request.path) > MAX_PATH:
            message = f"request path longer than {MAX_PATH} characters"
            return _json_error(414, "NAME_INVALID", message, None, {})
        if auth is not None and _is_api(request.path) and _user(auth) is None:
            challenge = auth.challenge(pages.base_url(), _scope(request.path))
            headers = {"WWW-Authenticate": challenge}
            return _json_error(401, "UNAUTHORIZED", "authentication required", None, headers)
        return None

    @app.route("/auth/token")
    def token() -> Response:
        """Docker's token endpoint: a name and password (Basic) for a short-lived token."""
        if auth is None:
            raise NotFound()
        credentials = _credentials()
        if credentials is None or credentials.type != "basic" or _user(auth) is None:
            headers = {"WWW-Authenticate": 'Basic realm="nixery"'}
            return _json_error(401, "UNAUTHORIZED", "a user name and password are needed",
                               None, headers)  # fmt: skip
        answer = auth.issue(credentials.username or "")
        return Response(json.dumps(answer), content_type="application/json")

    @app.after_request
    def headers(response: Response) -> Response:
        if _is_api(request.path):
            response.headers[API_VERSION[0]] = API_VERSION[1]
        if g.get("unlogged"):
            return response
        _access(request.method, request.path, response.status_code, g.started)
        return response

    return app


def _access(method: str, path: str, status: int, started: float) -> None:
    """A request's line in the log."""
    if log.isEnabledFor(logging.INFO):
        ms = (time.perf_counter() - started) * 1000
        log.info(
            "%s %s %d %.1fms", method, path, status, ms,
            extra={"http_method": method, "path": path, "status": status, "ms": round(ms, 1)},
        )  # fmt: skip


class _WarmManifests:
    """Answers the pulls of manifests that the service holds in memory (``ImageService.warm``)
    before Flask sees them: their reply is the manifest's bytes and four headers, and Flask's
    request context, routing and hooks cost more than the rest of such a pull. Anything
    else, a miss, and any error, go on to the app, which answers them the one way (and logs
    a bug); an error goes with the request (``_WARM_ERROR``), so that the app raises it
    rather than asking again (a failing source lookup would run twice per pull).

    ``_names`` is read and written without a lock: see ``nixery.caches`` on single dict
    operations."""

    def __init__(
        self,
        service: ImageService,
        app: WSGIApplication,
        max_packages: int,
        platforms: Sequence[Architecture],
    ) -> None:
        self.service, self.app = service, app
        self.max_packages, self.platforms = max_packages, platforms
        # repository name -> what it asks for; bounded, since names come from the internet
        self._names: dict[str, ImageRequest] = {}

    def __call__(
        self, wsgi_environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        # Not named environ: its keys are the request's, not settings of the environment.
        started = time.perf_counter()
        method, path = wsgi_environ["REQUEST_METHOD"], wsgi_environ.get("PATH_INFO", "")
        if method not in _READ or not path.startswith("/v2/") or len(path) > MAX_PATH:
            return self.app(wsgi_environ, start_response)
        match = _MANIFEST.fullmatch(path, 4)
        if match is None:
            return self.app(wsgi_environ, start_response)
        try:
            manifest = self.service.warm(
                self._request(match["name"]),
                parse_reference(match["reference"]),
                [wsgi_environ.get("HTTP_ACCEPT", "")],
            )
        except Exception as e:  # the app answers it, and logs it if it is a bug
            wsgi_environ[_WARM_ERROR] = e
            return self.app(wsgi_environ, start_response)
        if manifest is None:
            return self.app(wsgi_environ, start_response)
        start_response("200 OK", [
            ("Content-Type", manifest.media_type),
            ("Content-Length", str(len(manifest.body))),
            ("Docker-Content-Digest", manifest.digest),
            API_VERSION,
        ])  # fmt: skip
        _access(method, path, 200, started)
        return [] if method == "HEAD" else [manifest.body]

    def _request(self, name: str) -> ImageRequest:
        if (found := self._names.get(name)) is not None:
            return found
        image = parse_name(name, self.max_packages, self.platforms)
        if len(self._names) >= _NAMES:
            self._names.clear()
        self._names[name] = image
        return image


def _user(auth: Auth) -> str | None:
    """The user the request's credentials prove, if any; a refusal is logged without them."""
    credentials = _credentials()
    if credentials is None:
        return None
    user: str | None = None
    client = request.remote_addr or ""
    if credentials.type == "basic" and credentials.username and credentials.password:
        claimed = credentials.username[:64]
        good = auth.check_password(credentials.username, credentials.password, client)
        user = claimed if good else None
    elif credentials.type == "bearer" and credentials.token:
        claimed = "(a token)"
        user = auth.user_of_token(credentials.token)
    else:
        claimed = f"(a {credentials.type} credential)"
    if user is None:
        log.warning("refused %s from %s", claimed, client,
                    extra={"client": client, "user": claimed})  # fmt: skip
    return user


def _credentials() -> Authorization | None:
    """The request's Authorization header, or None: a malformed one is no credential."""
    try:
        return request.authorization
    except ValueError:  # werkzeug's Basic parser lets base64's refusal of non-ASCII through
        return None


def _scope(path: str) -> str | None:
    """The token scope a request needs: pulling the repository it names, if it names a valid
    one (a stranger's quote would end the header's parameter: another realm could follow)."""
    api = path.removeprefix("/v2/")
    for pattern in (_MANIFEST, _BLOB, _TAGS, _REFERRERS):
        if (match := pattern.fullmatch(api)) and NAME_RE.fullmatch(match["name"]):
            return f"repository:{match['name']}:pull"
    return None


def _is_api(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _only_read() -> None:
    """Refuses every method but GET and HEAD: nothing can be pushed or deleted here."""
    if request.method not in _READ:
        raise Unsupported(
            f"{request.method} is not supported: this registry is read-only", allow=_ALLOW
        )


def error_response(e: Exception) -> Response:
    """The one mapping of errors to the wire; anything unknown is a 500 with no detail."""
    status, code = next(ERRORS[t] for t in type(e).__mro__ if t in ERRORS)
    headers: dict[str, str] = {}
    if isinstance(e, Unsupported):
        headers["Allow"] = e.allow
    if isinstance(e, Transient):
        headers["Retry-After"] = str(RETRY_AFTER)
    if isinstance(e, Throttled):
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    if not isinstance(e, NixeryError):
        return _json_error(status, code, "internal error", None, headers)
    if isinstance(e, BuildError) and e.key is not None:
        explained = pages.explain(e, e.key)
        response = _json_error(status, code, explained.message, explained.detail, headers)
        response.status = f"{status} {explained.reason}"
        return response
    return _json_error(status, code, e.message, e.detail, headers)


def _json_error(
    status: int, code: str, message: str, detail: Any, headers: dict[str, str]
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    body = json.dumps({"errors": [error]}).encode()
    response = Response(body, status=status, content_type="application/json")
    response.headers.update(headers)
    return response


def _manifest(service: ImageService, image: ImageRequest, reference: Tag | Digest) -> Response:
    # waitress says when a client hung up while its request waited; other servers never do.
    gone = request.environ.get("waitress.client_disconnected") or never
    caller = Caller(request.remote_addr or "", gone)
    manifest = service.manifest(image, reference, request.headers.getlist("Accept"), caller)
    response = Response(manifest.body, content_type=manifest.media_type)
    response.headers["Docker-Content-Digest"] = manifest.digest
    return response


def _blob(service: ImageService, digest: Digest) -> BaseResponse:
    location = service.blob(digest)
    etag = digest.partition(":")[2]
    if location.url and request.method == "GET":
        response = redirect(location.url, code=307)
    elif request.method == "HEAD":
        response = Response(content_type="application/octet-stream")
        response.content_length = location.size
    elif (refused := _precondition(etag)) is not None:
        response = Response(status=refused)
        _cacheable(response, etag)
    else:
        # Built by hand rather than with send_file, which honours Range only for paths.
        body = wrap_file(request.environ, service.open_blob(digest))
        response = Response(body, content_type="application/octet-stream", direct_passthrough=True)
        response.content_length = location.size
        _cacheable(response, etag)
        # werkzeug only serves the range: the conditions are decided above, in the RFC's order.
        environ = {k: v for k, v in request.environ.items() if k not in _CONDITIONS}
        wanted = byte_range(request.headers.get("Range"), location.size)
        if wanted and _range_applies(etag):
            environ["HTTP_RANGE"] = wanted
        response = response.make_conditional(
            environ, accept_ranges=True, complete_length=location.size
        )
    response.headers["Docker-Content-Digest"] = digest
    return response


# What werkzeug would read as conditions of a request, or as its range.
_CONDITIONS = frozenset({
    "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF_RANGE", "HTTP_RANGE",
})  # fmt: skip


def _cacheable(response: BaseResponse, etag: str) -> None:
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.max_age = 31536000  # content-addressed: never changes


def _precondition(etag: str) -> int | None:
    """The status a GET's preconditions answer in place of the blob, in RFC 9110 section
    13.2.2's order, before any Range: a false ``If-Match`` (strong comparison) is a 412,
    then a true ``If-None-Match`` (weak comparison) a 304. A blob has no modification date,
    so the date conditions are ignored (sections 13.1.3 and 13.1.4)."""
    headers = request.headers
    if "If-Match" in headers and not parse_etags(headers["If-Match"]).contains(etag):
        return 412
    if "If-None-Match" in headers and parse_etags(headers["If-None-Match"]).contains_weak(etag):
        return 304
    return None


def _range_applies(etag: str) -> bool:
    """``If-Range`` (section 13.1.5): the range is served only if it names this blob's
    entity tag, compared strongly; a weak tag, a date (a blob has none) or another tag
    has the whole blob served."""
    if_range = request.headers.get("If-Range")
    return if_range is None or if_range.strip() == f'"{etag}"'


def byte_range(header: str | None, size: int) -> str | None:
    """The Range header read as RFC 9110 reads it, for werkzeug to serve, or None to serve
    the whole blob.

    Werkzeug parses and serves one range (a 416 with ``bytes */SIZE`` for one that starts
    past the end), but refuses with a 416 what the RFC has a server
    ignore (a header it cannot parse, another unit: section 14.2) or serve whole (a suffix
    longer than the blob: 14.1.2). Several ranges are served as the whole blob, as 14.2
    allows: registry clients never ask for them, and multipart answers to many small or
    overlapping ranges are a known way to make a server work for nothing."""
    parsed = parse_range_header(header)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None
    start, stop = parsed.ranges[0]
    if stop is None and start < 0:  # the last -start bytes, or all of them if fewer
        return f"bytes={max(0, size + start)}-"
    return header


def _tags(service: ImageService, name: str) -> Response:
    tags, next_last = page_tags(service.tags(), request.args.get("n"), request.args.get("last"))
    response = Response(json.dumps({"name": name, "tags": tags}), content_type="application/json")
    if next_last is not None:
        query = urllib.parse.urlencode({"last": next_last, "n": len(tags)})
        response.headers["Link"] = f'</v2/{name}/tags/list?{query}>; rel="next"'
    return response


def _referrers(service: ImageService, subject: Digest) -> Response:
    artifact_type = request.args.get("artifactType") or None
    body = service.referrers(subject, artifact_type)
    response = Response(body, content_type=OCI_INDEX)
    if artifact_type:
        response.headers["OCI-Filters-Applied"] = "artifactType"
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
        raise InvalidPageSize("n must be a non-negative integer", {"n": n[:100]})
    page = after[: int(n)]
    return page, page[-1] if page and len(page) < len(after) else None
