"""Build reports: what a build did, kept so that people can see it on the registry's pages.

The image's status (``PublishedImages``) says whether it can be served; a report says how it came to
be: its packages and their store paths, its closure, its layers, its manifests, its steps and
their times, and for a failure the reason and the end of Nix's log. The builder writes one at
every step, so a build under way shows where it is. Reports are stored as JSON in every mode.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from nixery.errors import interruption
from nixery.job import BuildJob
from nixery.oci.manifests import LayerBlob, Manifest
from nixery.ports import BuildReports, PublishedImages
from nixery.records import (
    INTERRUPTED,
    BuildReport,
    Failure,
    FailureReport,
    LayerReport,
    Published,
    StepTime,
)

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What the steps of one platform's image tell of their progress."""

    def update(self, **fields: Any) -> None: ...

    def add(self, step: str, began: float, ended: float) -> None:
        """Notes a step's time, written with the next update (``StepTime``)."""
        ...

    def span(self, step: str) -> AbstractContextManager[None]:
        """Times the block as ``step``, whether it ends well or not."""
        ...

    def closure(self, outputs: Mapping[str, str], sizes: Mapping[str, int]) -> None: ...

    def layers(self, groups: Sequence[Sequence[str]], blobs: Sequence[LayerBlob]) -> None: ...


class NullProgress:
    """Progress nobody reads: the other platforms' images of a multi-platform build, whose
    report follows the default platform's alone."""

    def update(self, **fields: Any) -> None:
        pass

    def add(self, step: str, began: float, ended: float) -> None:
        pass

    def span(self, step: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def closure(self, outputs: Mapping[str, str], sizes: Mapping[str, int]) -> None:
        pass

    def layers(self, groups: Sequence[Sequence[str]], blobs: Sequence[LayerBlob]) -> None:
        pass


# Writes the reports in the background: a report write is a database round trip (tens of
# milliseconds on Firestore), and a build writes one per step.
_WRITES = ThreadPoolExecutor(4, thread_name_prefix="report")


class Reporter:
    """Keeps one build's report up to date in ``BuildReports``, a write per step, made in
    the background (in order, the latest version of the report each time) so that no step
    waits for it; ``published`` and ``failed`` wait for the last one."""

    def __init__(
        self,
        reports: BuildReports,
        job: BuildJob,
        clock: Callable[[], float] = time.time,
        enqueued: float | None = None,
    ):
        """The build starts now, picked up by a builder; ``enqueued`` is when its queue took
        it (by ``clock``, which is the wall clock: the queue's is another machine's)."""
        self.reports = reports
        self.clock = clock
        started = clock()
        self._lock = threading.Lock()  # the layers' uploads note their times in parallel
        self._spans: dict[str, tuple[float, float]] = {}
        self._version = 0  # of the report; the writer goes on while it is not written
        self._writing: Future[None] | None = None  # while a write is under way
        self._written = 0  # the latest version written
        if enqueued is not None:
            self._spans["queue"] = (min(enqueued, started), started)
        self.report = BuildReport(
            key=job.key,
            packages=job.request.packages,
            system=job.request.arch.nix_system,
            nonroot=job.request.nonroot,
            asked=job.request.asked,
            revision=str(job.revision),
            started=started,
            status="building",
            step="checkout",
            steps=self._steps(),
        )
        self._save()

    def update(self, **fields: Any) -> None:
        self.report = replace(self.report, steps=self._steps(), **fields)
        self._save()

    def _save(self) -> None:
        with self._lock:
            self._version += 1
            if self._writing is not None:
                return  # the write under way goes on to this version
            self._writing = _WRITES.submit(self._write)

    def _write(self) -> None:
        """Writes the latest version until none newer is due; a failed write does not end
        it while a newer version waits (``close`` tries the latest once more)."""
        while True:
            with self._lock:
                report, version = self.report, self._version
            try:
                self.reports.record_report(report)
                written = True
            except Exception as e:
                log.warning("build %s: its report could not be written: %r", report.key, e)
                written = False
            with self._lock:
                if written:
                    self._written = max(self._written, version)
                if version == self._version:
                    self._writing = None
                    return

    def close(self) -> None:
        """Waits for the writes, then writes the latest report itself if it is not written
        (its failure raised: a Transient one)."""
        with self._lock:
            writing = self._writing
        if writing is not None:
            writing.result()
        with self._lock:
            report, version, written = self.report, self._version, self._written
        if written < version:
            self.reports.record_report(report)
            with self._lock:
                self._written = max(self._written, version)

    def add(self, step: str, began: float, ended: float) -> None:
        with self._lock:
            first, last = self._spans.get(step, (began, ended))
            self._spans[step] = (min(first, began), max(last, ended))

    @contextlib.contextmanager
    def span(self, step: str) -> Iterator[None]:
        began = self.clock()
        try:
            yield
        finally:
            self.add(step, began, self.clock())

    def _steps(self) -> tuple[StepTime, ...]:
        with self._lock:
            spans = sorted(self._spans.items(), key=lambda item: item[1])
        return tuple(StepTime(step, began, ended) for step, (began, ended) in spans)

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
        try:
            self.close()
        except Exception as e:  # the image is out: its page judges by the report's age
            log.warning("build %s: its report could not be written: %r", self.report.key, e)

    def interrupted(self, error: Exception, images: PublishedImages) -> None:
        """The build stopped for a reason outside the image (``Transient``, or a bug):
        said, for the pages, instead of a "building" that would never end, unless the image
        is published already (by another build, or by a publication that raised after it
        was made). The page reads a fixed phrase for the cause: the error's details may
        name the server's paths or hosts, and stay in the log. Best effort: the fault may
        be the database's own, and then the pages judge by the report's age."""
        try:
            try:
                if not isinstance(images.status(self.report.key), Published):
                    self.update(
                        status="interrupted",
                        finished=self.clock(),
                        failure=FailureReport(INTERRUPTED, interruption(error), ""),
                    )
            finally:
                self.close()  # the steps' writes end before the build's error is raised
        except Exception as e:  # never in place of the error being raised
            log.warning("build %s: its interruption could not be reported: %r", self.report.key, e)

    def failed(self, failure: Failure) -> None:
        log = str(failure.detail.get("log", ""))
        self.update(
            status="failed",
            finished=failure.at,
            failure=FailureReport(failure.kind.value, failure.message, log),
        )
        self.close()
