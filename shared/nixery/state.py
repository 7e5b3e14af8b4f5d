"""Registry state: published images, manifests, remembered failures and the layer cache.

The state store is the authority on what exists: a manifest is visible only once every blob
it references is stored, and an image only once its manifests are. One read of an image key
answers everything a request needs to decide: published, failed, being built, or unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from .errors import BuildError, BuildFailed, BuildTimedOut, ImageTooLarge, UnknownPackages
from .manifests import LayerBlob, Manifest

if TYPE_CHECKING:
    from .reports import BuildReport

# What is kept of a failure, in every store: a Firestore document holds at most 1 MiB, and
# nobody reads more of a log in an error reply. JSON may escape a character into 6 bytes, so
# even a worst-case log stays far below that. A log keeps its end, where Nix puts the error.
MAX_MESSAGE = 4096
MAX_LOG = 32 << 10
# The attribute names of one revision kept for the search box: nixpkgs has about 120,000
# with its nested sets, some 3 MB, over a Firestore document's 1 MiB; their start is kept.
MAX_PACKAGE_NAMES = 900_000  # characters, joined by newlines


def _bounded(text: str, limit: int, keep_end: bool) -> str:
    if len(text) <= limit:
        return text
    if keep_end:
        return f"[nixery: {len(text) - limit} characters cut]\n" + text[-limit:]
    return text[:limit] + f" [nixery: {len(text) - limit} characters cut]"


class FailureKind(StrEnum):
    """Why an image could not be built; what is stored, never an HTTP status."""

    UNKNOWN_PACKAGES = "unknown_packages"
    BUILD_ERROR = "build_error"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"


@dataclass(frozen=True)
class Failure:
    """A finished build that produced no image, remembered so it is not retried every pull."""

    kind: FailureKind
    message: str
    detail: Mapping[str, Any]
    at: float  # time.time() when it failed

    @classmethod
    def of(cls, error: BuildError, at: float) -> Failure:
        """The failure to remember for an error, its message and log bounded in size."""
        detail = dict(error.detail or {})
        if isinstance(detail.get("log"), str):
            detail["log"] = _bounded(detail["log"], MAX_LOG, keep_end=True)
        message = _bounded(error.message, MAX_MESSAGE, keep_end=False)
        if isinstance(error, UnknownPackages):
            kind = FailureKind.UNKNOWN_PACKAGES
        elif isinstance(error, ImageTooLarge):
            kind = FailureKind.TOO_LARGE
        elif isinstance(error, BuildTimedOut):
            kind = FailureKind.TIMEOUT
        else:
            kind = FailureKind.BUILD_ERROR
        return cls(kind, message, detail, at)

    def error(self) -> BuildError:
        """The error this failure answers, as it was raised when the build failed."""
        if self.kind is FailureKind.UNKNOWN_PACKAGES:
            packages = list(self.detail.get("packages", []))
            return UnknownPackages(packages, self.detail.get("suggestions"))
        if self.kind is FailureKind.TOO_LARGE:
            return ImageTooLarge(int(self.detail["size"]), int(self.detail["limit"]))
        error_type = BuildTimedOut if self.kind is FailureKind.TIMEOUT else BuildFailed
        return error_type(self.message, str(self.detail.get("log", "")))


@dataclass(frozen=True)
class Published:
    """A built image: its manifests' digests by media type."""

    manifests: Mapping[str, str]


@dataclass(frozen=True)
class Pending:
    """A build under way (only where builds outlive a request: Google Cloud mode)."""

    lease_left: float  # seconds, by the store's clock when it answered; <= 0 once lapsed


ImageStatus = Published | Failure | Pending | None


class State(Protocol):
    def status(self, key: str) -> ImageStatus:
        """Everything known about an image key, from a single read."""
        ...

    def manifest(self, digest: str) -> Manifest | None: ...

    def publish(
        self, key: str, manifests: list[Manifest], referrers: Sequence[Manifest] = ()
    ) -> None:
        """Stores the manifests and makes the image visible, atomically; clears any failure.
        ``referrers`` (an SBOM, a signature: artifacts whose subject is one of the manifests)
        are stored in the same step, so an image is never visible without them, and are
        kept as long as the image."""
        ...

    def referrers(self, subject: str) -> list[Manifest]:
        """The stored artifacts whose subject is the manifest ``subject``; none if unknown."""
        ...

    def touch(self, key: str, now: float) -> None:
        """Notes that the image was pulled by tag at ``now``: `nixery gc` keeps what was used."""
        ...

    def forget(self, key: str) -> None:
        """Makes a published image unknown again (its manifests stay), so that it is built
        anew: it lost its manifest or a blob."""
        ...

    def record_failure(self, key: str, failure: Failure) -> None: ...

    def layer(self, layer_key: str) -> LayerBlob | None:
        """A layer archived before for the same store-path set (and archive format)."""
        ...

    def record_layer(self, layer_key: str, layer: LayerBlob) -> None: ...

    # --- What people see on the registry's pages ---------------------------------------

    def record_report(self, report: BuildReport) -> None:
        """Stores a build's report, replacing the one of its key."""
        ...

    def report(self, key: str) -> BuildReport | None: ...

    def recent_reports(self, limit: int) -> list[BuildReport]:
        """The reports of the latest builds, the latest started first."""
        ...

    def layer_users(self, digest: str, limit: int) -> int:
        """How many reported images hold the layer, counted up to ``limit``."""
        ...

    def record_package_names(self, revision: str, names: Sequence[str]) -> None:
        """The attribute names a revision of the package set has, for the search box."""
        ...

    def package_names(self, revision: str) -> list[str] | None: ...


def bounded_names(names: Sequence[str]) -> list[str]:
    """As many of the sorted names as a store keeps (MAX_PACKAGE_NAMES)."""
    kept: list[str] = []
    total = 0
    for name in sorted(names):
        total += len(name) + 1
        if total > MAX_PACKAGE_NAMES:
            break
        kept.append(name)
    return kept
