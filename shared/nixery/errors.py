"""Registry errors, in the shape every registry client understands.

The distribution spec fixes the JSON body (``{"errors": [{"code", "message", "detail"}]}``) and
the codes; clients decide whether to retry from the status alone (502/503/504 are retryable,
other 5xx are final), so each error carries both.
"""

from __future__ import annotations

import json
from typing import Any


class RegistryError(Exception):
    """An error answered to the client; raising one anywhere in a request is safe."""

    status = 500
    code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        detail: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()


class BlobUnknown(RegistryError):
    status, code = 404, "BLOB_UNKNOWN"


class DigestInvalid(RegistryError):
    status, code = 400, "DIGEST_INVALID"


class ManifestUnknown(RegistryError):
    status, code = 404, "MANIFEST_UNKNOWN"


class NameInvalid(RegistryError):
    status, code = 400, "NAME_INVALID"


class NameUnknown(RegistryError):
    status, code = 404, "NAME_UNKNOWN"


class Unsupported(RegistryError):
    status, code = 405, "UNSUPPORTED"


class PaginationNumberInvalid(RegistryError):
    """A tags/list ``n`` that is no count; the code is the reference registry's."""

    status, code = 400, "PAGINATION_NUMBER_INVALID"


class RangeInvalid(RegistryError):
    """A blob Range that cannot be served; the code is the reference registry's."""

    status, code = 416, "RANGE_INVALID"


class BuildFailed(RegistryError):
    """Nix could not build the image; retrying the same request gives the same answer."""

    status, code = 500, "UNKNOWN"


class Unavailable(RegistryError):
    """A transient condition (build still running, source unreachable); clients retry 503."""

    status, code = 503, "UNAVAILABLE"
