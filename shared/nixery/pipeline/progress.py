"""Build reports: what a build did, kept so that people can see it on the registry's pages.

The image's status (``PublishedImages``) says whether it can be served; a report says how it came to
be: its packages and their store paths, its closure, its layers, its manifests, its steps and
their times, and for a failure the reason and the end of Nix's log. The builder writes one at
every step, so a build under way shows where it is. Reports are stored as JSON in every mode.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from nixery.errors import (
    BuildInterrupted,
    DatabaseUnavailable,
    ImageLost,
    QueueUnavailable,
    SourceUnavailable,
    StorageUnavailable,
    Transient,
)
from nixery.job import BuildJob
from nixery.oci.manifests import LayerBlob, Manifest
from nixery.ports import BuildReports, PublishedImages
from nixery.records import INTERRUPTED, BuildReport, Failure, FailureReport, LayerReport, Published

log = logging.getLogger(__name__)

# What an interrupted build's page says stopped it: one phrase per kind of fault.
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


class Progress(Protocol):
    """What the steps of one platform's image tell of their progress."""

    def update(self, **fields: Any) -> None: ...

    def closure(self, outputs: Mapping[str, str], sizes: Mapping[str, int]) -> None: ...

    def layers(self, groups: Sequence[Sequence[str]], blobs: Sequence[LayerBlob]) -> None: ...


class NullProgress:
    """Progress nobody reads: the other platforms' images of a multi-platform build, whose
    report follows the default platform's alone."""

    def update(self, **fields: Any) -> None:
        pass

    def closure(self, outputs: Mapping[str, str], sizes: Mapping[str, int]) -> None:
        pass

    def layers(self, groups: Sequence[Sequence[str]], blobs: Sequence[LayerBlob]) -> None:
        pass


class Reporter:
    """Keeps one build's report up to date in ``BuildReports``, a write per step."""

    def __init__(
        self, reports: BuildReports, job: BuildJob, clock: Callable[[], float] = time.time
    ):
        self.reports = reports
        self.clock = clock
        self.report = BuildReport(
            key=job.key,
            packages=job.request.packages,
            system=job.request.arch.nix_system,
            nonroot=job.request.nonroot,
            revision=str(job.revision),
            started=clock(),
            status="building",
            step="checkout",
        )
        reports.record_report(self.report)

    def update(self, **fields: Any) -> None:
        self.report = replace(self.report, **fields)
        self.reports.record_report(self.report)

    def closure(self, outputs: Mapping[str, str], sizes: Mapping[str, int]) -> None:
        self.update(outputs=dict(outputs), closure=dict(sizes))

    def layers(self, groups: Sequence[Sequence[str]], blobs: Sequence[LayerBlob]) -> None:
        """The layers in manifest order: one per group of store paths, then the root's."""
        sizes = self.report.closure
        self.update(
            layers=tuple(
                LayerReport(
                    blob.digest,
                    blob.size,
                    sum(sizes.get(p, 0) for p in paths),
                    tuple(sorted(paths)),
                )
                for blob, paths in zip(blobs, [*groups, []], strict=True)
            )
        )

    def published(self, manifests: Sequence[Manifest]) -> None:
        self.update(
            status="published",
            finished=self.clock(),
            manifests={m.media_type: m.digest for m in manifests},
        )

    def interrupted(self, error: Exception, images: PublishedImages) -> None:
        """The build stopped for a reason outside the image (``Transient``, or a bug):
        said, for the pages, instead of a "building" that would never end, unless the image
        is published already (by another build, or by a publication that raised after it
        was made). The page reads a fixed phrase for the cause: the error's details may
        name the server's paths or hosts, and stay in the log. Best effort: the fault may
        be the database's own, and then the pages judge by the report's age."""
        try:
            if isinstance(images.status(self.report.key), Published):
                return
            self.update(
                status="interrupted",
                finished=self.clock(),
                failure=FailureReport(INTERRUPTED, interruption(error), ""),
            )
        except Exception as e:  # never in place of the error being raised
            log.warning("build %s: its interruption could not be reported: %r", self.report.key, e)

    def failed(self, failure: Failure) -> None:
        log = str(failure.detail.get("log", ""))
        self.update(
            status="failed",
            finished=failure.at,
            failure=FailureReport(failure.kind.value, failure.message, log),
        )
