"""The registry protocol's media types and error codes, and a raw request, as the protocol
tests and the client tests use them."""

from __future__ import annotations

import base64
import http.client
import urllib.parse
from typing import Any

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def basic(user: str, password: str) -> str:
    """An Authorization header's value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# What containerd 1.6 sends when it resolves a tag: one comma-joined line.
CONTAINERD_ACCEPT = f"{DOCKER}, {DOCKER_LIST}, {OCI}, {OCI_INDEX}, */*"

# The spec's error codes, and those the reference registry adds (errcode/register.go and
# registry/api/v2/errors.go); clients treat any other code as UNKNOWN.
SPEC_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
}  # fmt: skip
ERROR_CODES = SPEC_CODES | {
    "UNKNOWN", "UNAVAILABLE", "RANGE_INVALID", "PAGINATION_NUMBER_INVALID", "TAG_INVALID",
    "MANIFEST_UNVERIFIED",
}  # fmt: skip


def raw(
    target: Any, method: str, path: str, headers: list[tuple[str, str]]
) -> tuple[int, Any, bytes]:
    """A request with repeated header lines, which requests cannot send."""
    url = urllib.parse.urlsplit(target.url)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.netloc, timeout=300)
    try:
        conn.putrequest(method, path)
        for key, value in headers:
            conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()
