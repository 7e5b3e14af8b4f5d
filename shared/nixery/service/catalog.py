"""What the registry's pages show: a read model over the build reports and package names.

The pages are read far more often than builds change, and by anyone: a busy front page must
not read 30 reports from the database on every view. So the latest builds and whether a
layer is shared are kept in memory for seconds, a revision's package names (which never
change) for as long as there is room; a build's own page is read fresh, since it follows a
build under way.

A build that stops for a transient fault says so in its report ("interrupted"); one whose
report could not be written (its process killed, its database down) would say "building"
for ever, so a report that has said it for longer than two build deadlines (as long as
``nixery gc`` waits for a build) is read as interrupted too, and at once where the mode
knows the build stopped (local mode: a build from before a restart that no thread runs).
The image's status is the authority over either: a build whose last report was lost, or
that another build overcame, reads published or failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from nixery.caches import BoundedCache, Clock
from nixery.errors import NixeryError
from nixery.ports import BuildReports, PackageNames, PublishedImages, Source, StatePorts
from nixery.records import (
    INTERRUPTED,
    BuildReport,
    Failure,
    FailureReport,
    ImageStatus,
    Published,
    Revision,
)

# Builds on the front page.
RECENT = 30
# Seconds the latest builds, and whether a layer is shared, are kept in memory.
FRONT_TTL = 5.0
SHARED_TTL = 60.0
SILENT = (
    "no word from this build for longer than a build may take: it was stopped (a restart, "
    "or a fault that kept its report from being written)"
)
RESTARTED = "the registry restarted during this build"


class Catalog:
    def __init__(
        self,
        source: Source,
        images: PublishedImages,
        reports: BuildReports,
        names: PackageNames,
        deadline: float,
        clock: Clock = time.time,
        stopped: Callable[[BuildReport], bool] | None = None,
    ) -> None:
        """``deadline``: seconds one build may take (NIXERY_BUILD_DEADLINE); ``stopped``:
        whether a report saying "building" is known to be of a build that no longer runs."""
        self.source = source
        self._images = images
        self._reports = reports
        self._names = names
        self._silent_after = 2 * deadline
        self._clock = clock
        self._stopped = stopped
        self._recent: BoundedCache[list[BuildReport]] = BoundedCache(1, ttl=FRONT_TTL)
        self._shared: BoundedCache[bool] = BoundedCache(ttl=SHARED_TTL)
        self._names_of: BoundedCache[list[str]] = BoundedCache(4)

    @classmethod
    def of(
        cls,
        source: Source,
        state: StatePorts,
        deadline: float,
        stopped: Callable[[BuildReport], bool] | None = None,
    ) -> Catalog:
        return cls(source, state.images, state.reports, state.names, deadline, stopped=stopped)

    def latest(self) -> list[BuildReport]:
        """The latest builds, the latest started first."""
        found = self._recent.get("")
        if found is None:
            # Judged once per FRONT_TTL: an image's status is read for few reports, and
            # for those at most that often.
            reports = self._reports.recent_reports(RECENT)
            found = self._recent.keep(
                "", [self._judged(r, partial(self._images.status, r.key)) for r in reports]
            )
        return found

    def is_shared(self, digest: str) -> bool:
        """Whether more than one reported image holds the layer."""
        found = self._shared.get(digest)
        if found is None:
            found = self._shared.keep(digest, self._reports.layer_users(digest, 2) > 1)
        return found

    def package_names(self, revision: Revision) -> list[str] | None:
        found = self._names_of.get(str(revision))
        if found is None and (found := self._names.package_names(str(revision))) is not None:
            self._names_of.keep(str(revision), found)
        return found

    def current(self) -> tuple[Revision | None, str]:
        """The revision ``latest`` names now, or why it cannot be told."""
        try:
            return self.source.resolve("latest"), ""
        except NixeryError as e:
            return None, e.message

    def is_flake(self, revision: Revision) -> bool | None:
        """Whether the revision was read as a flake, as its latest build among the recent
        ones says: only a build checks a revision out, so None until one has."""
        reports = (r for r in self.latest() if r.revision == str(revision))
        latest = next((r for r in reports if r.status == "published"), None)
        return None if latest is None else latest.flake is not None

    def build(self, key: str) -> tuple[BuildReport | None, ImageStatus]:
        """A build's report and its image's status, as they are now."""
        report, status = self._reports.report(key), self._images.status(key)
        return None if report is None else self._judged(report, lambda: status), status

    def _judged(self, report: BuildReport, status: Callable[[], ImageStatus]) -> BuildReport:
        """The report as the image's status, read only for an interrupted report or one
        that says "building" of a stopped build, corrects it: published or failed (its
        last report was lost, or another build overcame the interruption), or else
        interrupted."""
        why = self._silence(report)
        if why is None and report.status != "interrupted":
            return report
        now = status()
        if isinstance(now, Published):
            return replace(report, status="published", failure=None)
        if isinstance(now, Failure):
            log = str(now.detail.get("log", ""))
            failure = FailureReport(now.kind.value, now.message, log)
            return replace(report, status="failed", failure=failure)
        if why is None:
            return report
        return replace(report, status="interrupted", failure=FailureReport(INTERRUPTED, why, ""))

    def _silence(self, report: BuildReport) -> str | None:
        """Why a report that says "building" is of a build that stopped, if it is."""
        if report.status != "building":
            return None
        if self._stopped is not None and self._stopped(report):
            return RESTARTED
        return SILENT if self._clock() - report.started >= self._silent_after else None
