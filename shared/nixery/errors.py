"""Domain errors: what can go wrong, in the core's own terms.

Names, sources, Nix, the pipeline and the stores raise these; none of them knows HTTP. The
registry protocol (``http/protocol.py``) alone turns each kind into a status and a registry error
code, in one table, as distribution's ``errcode`` package does for the reference registry.

Two families matter beyond the message: a ``BuildError`` is permanent (the same request
would fail the same way, so the failure is remembered), a ``Transient`` error is not (the
request is retried, and nothing about it is remembered).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from typing import Any, Self


class NixeryError(Exception):
    """An error a client may see: a message for people and an optional detail for programs."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def with_message(self, message: str) -> Self:
        """The same error told another way; an error is never changed once raised."""
        # Not copy.copy: it calls the class with ``args``, which not every error takes.
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.args, other.message = (message,), message
        return other


class ConfigError(Exception):
    """The configuration is invalid: raised at start, naming the variable; never a request's."""


class BadOutput(Exception):
    """The file ``nixery build -o`` names cannot or must not be written: told before the build."""


# --- The request itself is wrong -------------------------------------------------------


class InvalidName(NixeryError):
    """The repository name breaks the OCI grammar or our limits."""


class InvalidDigest(NixeryError):
    """A digest that is malformed or of an algorithm not used here."""


class InvalidTag(NixeryError):
    """A reference that is neither a digest nor a valid tag: it cannot name a manifest."""


class InvalidPageSize(NixeryError):
    """A ``tags/list`` ``n`` that is no count."""


class Unsupported(NixeryError):
    """A push, delete or other write: this registry builds its images and takes none."""

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class UnknownEndpoint(NixeryError):
    """A path under ``/v2/`` that names no endpoint of the protocol."""


class Throttled(NixeryError):
    """The client asked for more than it may for now: ``retry_after`` seconds until it may."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, {"retry_after": round(retry_after)})
        self.retry_after = retry_after


class TooManyBuilds(Throttled):
    """The client started as many new builds as it may for now (NIXERY_CLIENT_BUILDS)."""


class TooManyLogins(Throttled):
    """Too many failed logins from the client's address, or for the user name it claims
    (NIXERY_AUTH_FAILURES): its password is not checked for now."""


# --- What was asked for does not exist -------------------------------------------------


class UnknownTag(NixeryError):
    """The package source has no version by that tag."""


class UntrustedRevision(NixeryError):
    """The tag names a commit the operator does not trust: its code is never evaluated."""


class UnknownManifest(NixeryError):
    """No manifest has that digest here."""


class UnknownBlob(NixeryError):
    """No blob has that digest here."""


# --- Permanent build failures: remembered for a while, not rebuilt on every pull ------


class BuildError(NixeryError):
    """The image cannot be built: retrying the same request gives the same answer."""

    # The image key of the build that failed, once known: its web page tells the whole story.
    key: str | None = None


class UnknownPackages(BuildError):
    """``suggestions``: for a missing name, the package set's names it may have meant."""

    def __init__(
        self, names: Sequence[str], suggestions: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        meant = {n: list(s) for n, s in (suggestions or {}).items() if s}
        listed = [n + (f" (did you mean {' or '.join(meant[n])}?)" if n in meant else "")
                  for n in names]  # fmt: skip
        detail: dict[str, Any] = {"packages": list(names)}
        if meant:
            detail["suggestions"] = meant
        super().__init__("unknown packages: " + ", ".join(listed), detail)
        self.names = list(names)


class BuildFailed(BuildError):
    """Nix failed to evaluate the package set or to build a derivation."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message, {"log": log_tail})
        self.log_tail = log_tail


class ConflictingInterpreters(BuildFailed):
    """The name asks for packages of two interpreters of one language: an image holds one
    environment per language, whose ``python3`` (or ``perl``...) is the one on PATH."""

    def __init__(self, conflicts: Sequence[str]) -> None:
        """``conflicts``: one per language, naming its packages and their interpreters."""
        super().__init__(
            "packages of different interpreters of one language cannot share an image: "
            + "; ".join(conflicts)
            + ". Ask for one interpreter's packages."
        )


class BuildTimedOut(BuildFailed):
    """A Nix builder ran past ``NIX_TIMEOUT``, or Nix past its own deadline."""


class ImageTooLarge(BuildError):
    """The image's closure is larger than this registry builds (NIXERY_MAX_IMAGE_SIZE)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the image would hold {size / 1e9:.2f} GB, over this registry's limit of "
            f"{limit / 1e9:.2f} GB",
            {"size": size, "limit": limit},
        )
        self.size = size
        self.limit = limit


# --- Transient trouble: retried, never remembered -------------------------------------


class Transient(NixeryError):
    """Something outside the request failed for now; the same request may succeed later."""


class SourceUnavailable(Transient):
    """The package source could not be reached or read."""


class BuildInterrupted(Transient):
    """Nix stopped for reasons outside the package set: a download, a full disk, a kill."""


class StillBuilding(Transient):
    """The build goes on past the time a request may wait for it."""


class BuildRetrying(Transient):
    """The build's last attempt stopped for a passing cause (its message says which); the
    queue delivers it again."""


class StorageUnavailable(Transient):
    """The blob store did not answer in time, or failed."""


class DatabaseUnavailable(Transient):
    """The state store did not answer in time, or failed."""


class QueueUnavailable(Transient):
    """The build queue did not take the build in time, or failed."""


class BuildQueueFull(Transient):
    """As many builds as the registry allows are running or waiting."""


class LoginsBusy(Transient):
    """As many passwords as the registry checks at once are being checked (NIXERY_AUTH_CHECKS)."""


class CommitChecksBusy(Transient):
    """As many commit tags as may be are being checked against the trusted history: each
    holds a request thread while the checks take turns, up to a fetch's timeout each."""


class TooManyWaiters(Transient):
    """As many requests wait for builds as may (in all, from the address, or for the image):
    each holds a request thread, and cached pulls need some left. The build goes on."""


class ClientGone(Transient):
    """The client hung up while its request waited for a build."""


class ImageLost(Transient):
    """A published image lost its manifest or a blob, and its rebuild is not done yet."""


# What a refusal of the operating system means, in words for the client: never a path (a
# client has no business knowing the server's), which the adapters log instead.
_OS_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the disk is read-only",
    errno.EIO: "an I/O error",
    errno.ENOENT: "a file or directory is missing",
}


def os_cause(error: OSError) -> str:
    """Why the operating system refused, named for the client (``the disk is full``)."""
    # Never str(error): it may hold a path, which is the server's business.
    return _OS_CAUSES.get(error.errno or 0) or (error.strerror or "refused by the system").lower()


# What stopped a build, in words for anyone who may see it (its page, the clients waiting for
# it): one fixed phrase per kind of fault, never the error's own text, which may hold what is
# the operator's alone (a path, a signed or resumable upload URL) and goes to the log.
DISK_FULL = "the disk was full"
INTERRUPTIONS: dict[type[Exception], str] = {
    StorageUnavailable: "the blob storage was unavailable",
    DatabaseUnavailable: "the database was unavailable",
    SourceUnavailable: "the package source was unavailable",
    QueueUnavailable: "the build queue was unavailable",
    BuildInterrupted: "Nix was stopped from outside (a download, the disk or memory)",
    ImageLost: "a blob of the image was lost",
    Transient: "a passing fault of the registry",
    Exception: "an internal error of the registry (its log has the details)",
}


def interruption(error: Exception) -> str:
    """The phrase for what stopped a build: its kind's, or a full disk whatever the kind
    (the operator's most common fix)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return DISK_FULL
        cause = cause.__cause__ or cause.__context__
    return next(INTERRUPTIONS[kind] for kind in type(error).__mro__ if kind in INTERRUPTIONS)
