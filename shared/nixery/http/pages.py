"""The registry's pages outside ``/v2/``: what people read, and the same as JSON for scripts.

The front page (how to pull from this very host, the package source and its revision, the
meta-packages, the latest builds, a search box over the package names), a page per build
(its packages, closure, layers, manifests and pull commands, or why it failed and Nix's
log), and under ``/api/v1/`` the same information as JSON. Everything comes from the build
reports, through the read model ``service.catalog``, so it reads alike in local mode and on
Google Cloud; templates escape it all.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from werkzeug.exceptions import NotFound

from nixery.errors import BuildError
from nixery.oci.manifests import OCI_INDEX, OCI_MANIFEST
from nixery.records import BuildReport, Failure, Pending, Published, report_url
from nixery.request import ALWAYS_INCLUDED, AMD64, HOME, SHELL_PACKAGES, UID, USER
from nixery.service.catalog import Catalog
from nixery.store_names import parse_store_name

# Search results shown.
MAX_RESULTS = 100
# What a registry client prints of a failure: Nix's last lines, not the whole log.
CLIENT_LOG_LINES = 6
CLIENT_LINE = 200
# A status line's reason phrase (what containerd shows) is one short line of ASCII.
MAX_REASON = 400
# What becomes of an interrupted build, in both modes: nothing of it is remembered, and
# Google Cloud's builder answers its task with an error, which Cloud Tasks retries.
RETRIED = (
    "the next pull of this image builds it again; on Google Cloud, Cloud Tasks also "
    "retries the build by itself"
)
PUBLIC_URL = "NIXERY_PUBLIC_URL"  # the app's config key

_KEY = re.compile(r"[0-9a-f]{64}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# Nix's lines that say nothing about a failure: what it is about to build, and blank ones.
_NOISE = re.compile(
    r"\s*$|these \d+ derivations|this derivation|\s+/nix/store/\S+\.drv$|building '"
)


def base_url() -> str:
    """This registry's URL as clients reach it: configured, or the request's own."""
    configured: str | None = current_app.config.get(PUBLIC_URL)
    return (configured or request.host_url).rstrip("/")


def build_url(key: str) -> str:
    return report_url(base_url(), key)


@dataclass(frozen=True)
class Explained:
    """A failed build as a registry client shows it."""

    message: str  # the JSON error's: what failed, Nix's last lines, the build's page
    detail: dict[str, Any]
    reason: str  # the status line's reason phrase: what failed and the page, on one line


def explain(error: BuildError, key: str) -> Explained:
    url = build_url(key)
    log = str((error.detail or {}).get("log", "")) if isinstance(error.detail, Mapping) else ""
    lines = [line[:CLIENT_LINE] for line in log.splitlines() if not _NOISE.match(line)]
    tail = lines[-CLIENT_LOG_LINES:]
    message = "\n".join([error.message, *(f"  {line}" for line in tail), f"details: {url}"])
    detail = {**(error.detail if isinstance(error.detail, Mapping) else {}), "url": url}
    summary = _UNPRINTABLE.sub("?", " ".join(error.message.split()))
    reason = f"{summary[: MAX_REASON - len(url) - 12]} (details: {url})"
    return Explained(message, detail, reason)


def image_name(
    packages: tuple[str, ...], system: str, nonroot: bool = False, asked: tuple[str, ...] = ()
) -> str:
    """A name that pulls exactly these packages, with the same key: the ones every image
    holds are left out, and the shell's are ``shell``, unless the name listed them itself
    (``asked``, part of the key)."""
    prefix = [] if system == AMD64.nix_system else ["arm64"]
    if nonroot:
        prefix.append("nonroot")
    left = set(packages) - set(ALWAYS_INCLUDED)
    if left >= set(SHELL_PACKAGES):
        prefix.append("shell")
        left -= set(SHELL_PACKAGES)
    left |= set(asked)
    return "/".join(prefix + [p.lower().lstrip("_") for p in sorted(left)]) or "cacert"


def _steps(report: BuildReport) -> list[dict[str, Any]]:
    """Each step's times, in seconds from the first one's beginning (the enqueue, where
    known), and as they were recorded."""
    origin = min((s.began for s in report.steps), default=report.started)
    return [
        {
            "step": s.step,
            "began": s.began,
            "ended": s.ended,
            "at": round(s.began - origin, 3),
            "seconds": round(s.ended - s.began, 3),
        }
        for s in report.steps
    ]


def report_name(report: BuildReport) -> str:
    """The name that pulls the report's image. A build of several platforms (its manifests
    include an index) is pulled without ``arm64/``, whichever platform its report follows."""
    several = OCI_INDEX in report.manifests
    system = AMD64.nix_system if several else report.system
    return image_name(report.packages, system, report.nonroot, report.asked)


def _when(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def blueprint(catalog: Catalog) -> Blueprint:
    pages = Blueprint("pages", __name__, template_folder="templates")

    def front() -> dict[str, Any]:
        revision, trouble = catalog.current()
        reports = catalog.latest()
        return {
            "host": urllib.parse.urlsplit(base_url()).netloc,
            "url": base_url(),
            "source": revision.source if revision else None,
            "revision": revision.value if revision else None,
            "flake": catalog.is_flake(revision) if revision else None,
            "source_trouble": trouble,
            "meta_packages": {
                "shell": list(SHELL_PACKAGES),
                "arm64": ["builds for aarch64-linux instead of x86_64-linux"],
                "nonroot": [f"runs as the user {USER} (uid and gid {UID}), from its home {HOME}"],
            },
            "runs": [
                "with shell: bash",
                "with exactly one package that declares a main program (meta.mainProgram): "
                "that program, as the entrypoint",
                "otherwise: nothing unless told",
            ],
            "always_included": list(ALWAYS_INCLUDED),
            "builds": [summary(r) for r in reports],
        }

    def summary(report: BuildReport) -> dict[str, Any]:
        return {
            "key": report.key,
            "name": report_name(report),
            "status": report.status,
            "step": report.step,
            "revision": report.revision,
            "started": _when(report.started),
            "finished": _when(report.finished),
            "seconds": report.seconds,
            "size": report.size,
            "url": build_url(report.key),
            "failure": report.failure.message if report.failure else None,
            **({"retry": RETRIED} if report.status == "interrupted" else {}),
        }

    def build(key: str) -> dict[str, Any]:
        if not _KEY.fullmatch(key):
            abort(404)
        report, status = catalog.build(key)
        if report is None and status is None:
            abort(404)
        host = urllib.parse.urlsplit(base_url()).netloc
        info: dict[str, Any] = {"key": key, "url": build_url(key), "host": host}
        if report is not None:
            name = report_name(report)
            # By the index's digest where there is one, so each client picks its platform.
            oci = report.manifests.get(OCI_INDEX) or report.manifests.get(OCI_MANIFEST)
            info |= summary(report) | {
                "packages": [_package(p, report.outputs.get(p)) for p in report.packages],
                "environments": [
                    {
                        "language": e.language,
                        "interpreter": e.interpreter,
                        "store_path": e.path,
                        "members": list(e.members),
                        "contents": list(e.contents),
                    }
                    for e in report.environments
                ],
                "plain": list(report.plain),
                "closure": [
                    {"path": path, "size": size} for path, size in sorted(report.closure.items())
                ],
                "closure_size": sum(report.closure.values()),
                "layers": [
                    {
                        "digest": layer.digest,
                        "size": layer.size,
                        "unpacked": layer.unpacked,
                        "paths": list(layer.paths),
                        "shared": catalog.is_shared(layer.digest),
                    }
                    for layer in report.layers
                ],
                "manifests": dict(report.manifests),
                "steps": _steps(report),
                "pull": _pulls(host, name, oci) if oci else [],
                "log": report.failure.log if report.failure else None,
                "reason": report.failure.kind if report.failure else None,
                "flake": asdict(report.flake) if report.flake else None,
                "left_out": list(report.left_out),
            }
        # The image status is the authority: a build may have failed without a report
        # (builders killed too often), or a report may lag. (An interrupted report whose
        # image is published or failed since is read so by the catalog: no retry is shown.)
        if isinstance(status, Failure):
            log = str(status.detail.get("log", ""))
            info |= {"status": "failed", "reason": status.kind.value, "failure": status.message}
            info["log"] = log
        elif isinstance(status, Published):
            info["status"] = "published"
            info["manifests"] = dict(status.manifests)
        elif isinstance(status, Pending) and report is None:
            info |= {"status": "building", "step": "waiting for a builder"}
        return info

    @pages.route("/")
    def front_page() -> str:
        return render_template("front.html", **front())

    @pages.route("/builds/<key>")
    def build_page(key: str) -> str:
        return render_template("build.html", **build(key))

    @pages.route("/search")
    def search_page() -> str:
        return render_template("search.html", **search(request.args.get("q", "")))

    def search(query: str) -> dict[str, Any]:
        query = query.strip()[:100]
        revision, trouble = catalog.current()
        names = catalog.package_names(revision) if revision else None
        host = urllib.parse.urlsplit(base_url()).netloc
        found = [n for n in names or [] if query.lower() in n.lower()] if query else []
        return {
            "query": query,
            "revision": str(revision) if revision else None,
            "indexed": names is not None,
            "source_trouble": trouble,
            "results": [
                {"attribute": n, "pull": f"{host}/shell/{image_name((n,), AMD64.nix_system)}"}
                for n in found[:MAX_RESULTS]
            ],
            "more": max(0, len(found) - MAX_RESULTS),
        }

    @pages.route("/api/v1/registry")
    def registry_json() -> Response:
        return jsonify(front())

    @pages.route("/api/v1/builds/<key>")
    def build_json(key: str) -> Response:
        return jsonify(build(key))

    @pages.route("/api/v1/packages")
    def packages_json() -> Response:
        return jsonify(search(request.args.get("q", "")))

    @pages.errorhandler(NotFound)
    def not_found(e: NotFound) -> tuple[Response | str, int]:
        if request.path.startswith("/api/"):
            return jsonify({"error": "no build with this key here"}), 404
        return render_template("missing.html"), 404

    @pages.app_template_filter("bytes")
    def human_bytes(size: int | None) -> str:
        if size is None:
            return ""
        value = float(size)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if value < 1024 or unit == "GiB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
        return ""

    return pages


def _package(attribute: str, path: str | None) -> dict[str, str | None]:
    version = parse_store_name(path)[1] if path else None
    return {"attribute": attribute, "store_path": path, "version": version}


def _pulls(host: str, name: str, digest: str) -> list[str]:
    """Pull commands by digest: they fetch exactly this build, whatever ``latest`` is now.
    Over plain HTTP, with the flags each client needs for it (docker needs its daemon told)."""
    image = f"{host}/{name}@{digest}"
    plain = base_url().startswith("http://")
    tls, ctr = (" --tls-verify=false", " --plain-http") if plain else ("", "")
    return [
        f"docker pull {image}",
        f"podman pull{tls} {image}",
        f"ctr image pull{ctr} {image}",
        f"skopeo copy{tls.replace('--', '--src-')} docker://{image} oci:image:latest",
    ]
