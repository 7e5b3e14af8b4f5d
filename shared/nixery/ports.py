"""The ports: what the core asks of the world, each as small as its callers need.

The protocol and the pipeline know only these; ``local/`` and ``gcp/`` implement them, and a
test's fake implements just the one it uses. Every adapter turns its backend's failures into
the transient errors of ``nixery.errors`` (a 503 with Retry-After), so nothing here names a
backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from nixery.job import BuildJob
from nixery.oci.manifests import LayerBlob, Manifest
from nixery.records import (
    BuildReport,
    Failure,
    FlakeOrigin,
    ImageRecord,
    ImageStatus,
    Published,
    Revision,
    StoredBlob,
)

# --- Blobs -------------------------------------------------------------------------------


class BlobWriter(Protocol):
    def write(self, data: bytes | memoryview) -> int: ...

    def commit(self, digest: str) -> None:
        """Publishes the bytes under ``digest``, or drops them if that blob exists already."""
        ...

    def cancel(self) -> None:
        """Drops what was written; harmless after a commit."""
        ...


class BlobStore(Protocol):
    """The blob store interface; local files and Google Cloud Storage implement it."""

    def writer(self) -> BlobWriter: ...

    def size(self, digest: str) -> int | None:
        """The blob's size in bytes, or None when it does not exist."""
        ...

    def intact(self, digest: str) -> bool:
        """Whether the blob is stored whole, its bytes the ones its digest names. A store that
        finds a blob damaged removes it, so that it is rebuilt rather than served."""
        ...

    def url(self, digest: str) -> str | None:
        """A URL to redirect clients to, or None when the registry serves the bytes itself."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes, for stores that serve them through the registry; ``UnknownBlob``
        when it is gone, as it may be since its check (`nixery gc --apply` while serving)."""
        ...


# --- State -------------------------------------------------------------------------------


class PublishedImages(Protocol):
    """Which images exist, and their manifests: the authority on what can be served.

    A manifest is visible only once every blob it references is stored, and an image only
    once its manifests are; one read of an image key answers everything a request needs."""

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

    def generation(self) -> int:
        """A number that moves whenever published images, their manifests or blobs may have
        gone (`nixery gc`, an image forgotten): what a caller found out about them holds
        while it stays. It moves at once for what this process deleted; for what others
        deleted, at once where the store tells (SQLite), else within a bound (Firestore: 10
        minutes, docs/security.md). Asked on every pull: it takes no lock that other calls
        wait on, and reads the state only when the state changed."""
        ...


class LayerCache(Protocol):
    """Layers archived before, by the store-path set (and archive format) they hold."""

    def layer(self, layer_key: str) -> LayerBlob | None:
        """A layer archived before for the same store-path set (and archive format)."""
        ...

    def record_layer(self, layer_key: str, layer: LayerBlob) -> None: ...


class BuildReports(Protocol):
    """What people see of builds on the registry's pages."""

    def record_report(self, report: BuildReport) -> None:
        """Stores a build's report, replacing the one of its key."""
        ...

    def report(self, key: str) -> BuildReport | None:
        """The report, with its ``answer`` step once a request waiting for it was answered."""
        ...

    def record_answer(self, key: str, at: float) -> None:
        """Notes when a request that waited for the build learnt of its publication: apart
        from the report, which its builder may still be writing then."""
        ...

    def recent_reports(self, limit: int) -> list[BuildReport]:
        """The reports of the latest builds, the latest started first."""
        ...

    def layer_users(self, digest: str, limit: int) -> int:
        """How many reported images hold the layer, counted up to ``limit``."""
        ...


class PackageNames(Protocol):
    """The attribute names of each revision of the package set, for search and suggestions."""

    def record_package_names(self, revision: str, names: Sequence[str]) -> None:
        """The attribute names a revision of the package set has, for the search box."""
        ...

    def package_names(self, revision: str) -> list[str] | None: ...


@dataclass(frozen=True)
class StatePorts:
    """The state ports of one database, as the builder and the service are given them."""

    images: PublishedImages
    layers: LayerCache
    reports: BuildReports
    names: PackageNames


# --- Garbage collection ------------------------------------------------------------------


class Inventory(Protocol):
    """What a database of the state ports lists and deletes for the collector."""

    def images(self) -> Iterable[ImageRecord]: ...

    def manifest_digests(self) -> Iterable[str]: ...

    def manifest(self, digest: str) -> Manifest | None: ...

    def layer_rows(self) -> Iterable[tuple[str, str]]:
        """(layer key, blob digest) of each layer-cache row."""
        ...

    def failures(self) -> Iterable[tuple[str, float]]:
        """(image key, when it failed) of each remembered failure."""
        ...

    def name_lists(self) -> Iterable[str]:
        """The revisions whose package names are stored, the most recently stored first."""
        ...

    def unfinished_reports(self) -> Iterable[tuple[str, float]]:
        """(image key, when its build started) of each report that says "building" or
        "interrupted": a build that stopped, or one under way."""
        ...

    def delete(
        self,
        *,
        images: Iterable[str] = (),
        manifests: Iterable[str] = (),
        layers: Iterable[str] = (),
        failures: Iterable[str] = (),
        name_lists: Iterable[str] = (),
        reports: Iterable[str] = (),
    ) -> None:
        """An image's or a failure's report goes with it; ``reports`` are others."""
        ...


class BlobInventory(Protocol):
    def blobs(self) -> Iterable[StoredBlob]: ...

    def delete(self, digest: str) -> None: ...


# --- Builds ------------------------------------------------------------------------------


def never() -> bool:
    return False


class BuildQueue(Protocol):
    def build(
        self, job: BuildJob, wait: float, gone: Callable[[], bool] = never
    ) -> Published | Failure | None:
        """Starts the job unless a build of its key runs already, then waits for it.

        Returns the outcome once the build has finished, or None when ``wait`` seconds pass
        first or ``gone()`` says the client hung up; the build goes on either way. A
        transient failure raises ``Transient``.
        """
        ...

    def running(self, key: str) -> bool:
        """Whether this queue knows a build of the key to be under way (joining it is free)."""
        ...


class BuildRunner(Protocol):
    """What runs a build to its end, its outcome recorded in the state (the pipeline's
    ``Builder``): local mode's queue runs it on its threads."""

    def run(self, job: BuildJob, enqueued: float | None = None) -> None:
        """Runs the build that its queue took at ``enqueued`` (``time.time()``)."""
        ...


class Enqueue(Protocol):
    """Where Google Cloud mode's queue sends a build, to be run by a builder service."""

    def enqueue(self, job: BuildJob, attempt: int) -> None: ...


class Listening(Protocol):
    """A listener on a build's record (``BuildRecords.listen``)."""

    @property
    def is_active(self) -> bool:
        """False once it broke (its changes no longer arrive) or was closed."""
        ...

    def unsubscribe(self) -> None:
        """Closes it and ends its threads."""
        ...


class BuildRecords(Protocol):
    """Google Cloud mode's build records: one record per build decides who enqueues it."""

    def start(self, job: BuildJob, pickup: float, max_building: int | None = None) -> int | None:
        """Records a build unless one is under way: the attempt to enqueue, or None."""
        ...

    def listen(self, key: str, changed: Callable[[ImageStatus], None]) -> Listening:
        """Calls ``changed`` with the record's status, at once and after each change of the
        record, on a thread of the listener's, until it is closed; a lease runs out without
        a change, so a ``Pending`` status says its lease's seconds left when it was read."""
        ...


# --- Package sources ---------------------------------------------------------------------


class Source(Protocol):
    """What the registry and the builder need, so that any of the three kinds can be configured."""

    def resolve(self, tag: str) -> Revision | None:
        """The exact revision `tag` names now, or None if there is no such version; a commit
        outside the source's trusted history raises UntrustedRevision."""
        ...

    def checkout(self, revision: Revision) -> Path:
        """A directory holding the set at exactly `revision`, its default.nix at the top."""
        ...

    def tags(self) -> list[str]:
        """The tags worth listing (tags/list): `latest`, and whatever else can be enumerated."""
        ...

    def flake_origin(self, revision: Revision) -> FlakeOrigin | None:
        """What a checkout of `revision` that holds flake.nix knows of itself when read as a
        flake; None where the source's sets are read by their default.nix whatever they hold
        (a channel's nixpkgs, as Nixery always has)."""
        ...


# --- Rate limits and signing -------------------------------------------------------------


class Limiter(Protocol):
    def admit(self, client: str) -> float | None:
        """Charges one new build to ``client``: None if it may start, else the seconds until
        it could."""
        ...


class Signer(Protocol):
    def sign(self, payload: bytes) -> bytes:
        """The signature of ``payload`` (SHA-256; ECDSA as DER, RSA as PKCS #1 v1.5)."""
        ...
