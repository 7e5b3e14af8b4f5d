"""What the registry's pages show: a read model over the build reports and package names.

The pages are read far more often than builds change, and by anyone: a busy front page must
not read 30 reports from the database on every view. So the latest builds and whether a
layer is shared are kept in memory for seconds, a revision's package names (which never
change) for as long as there is room; a build's own page is read fresh, since it follows a
build under way.

A build that stops for a transient fault says so in its report ("interrupted"); one whose
report could not be written (its process killed, its database down) would say "building"
for ever, so a report that has said it for longer than two build deadlines (as long as
``nixery gc`` waits for a build) is read as interrupted too.
"""

from __future__ import annotations

import time
from dataclasses import replace

from nixery.caches import BoundedCache, Clock
from nixery.errors import NixeryError
from nixery.ports import BuildReports, PackageNames, PublishedImages, Source, StatePorts
from nixery.records import INTERRUPTED, BuildReport, FailureReport, ImageStatus, Revision

# Builds on the front page.
RECENT = 30
# Seconds the latest builds, and whether a layer is shared, are kept in memory.
FRONT_TTL = 5.0
SHARED_TTL = 60.0
SILENT = (
    "no word from this build for longer than a build may take: it was stopped (a restart, "
    "or a fault that kept its report from being written)"
)


class Catalog:
    def __init__(
        self,
        source: Source,
        images: PublishedImages,
        reports: BuildReports,
        names: PackageNames,
        deadline: float,
        clock: Clock = time.time,
    ) -> None:
        """``deadline``: seconds one build may take (NIXERY_BUILD_DEADLINE)."""
        self.source = source
        self._images = images
        self._reports = reports
        self._names = names
        self._silent_after = 2 * deadline
        self._clock = clock
        self._recent: BoundedCache[list[BuildReport]] = BoundedCache(1, ttl=FRONT_TTL)
        self._shared: BoundedCache[bool] = BoundedCache(ttl=SHARED_TTL)
        self._names_of: BoundedCache[list[str]] = BoundedCache(4)

    @classmethod
    def of(cls, source: Source, state: StatePorts, deadline: float) -> Catalog:
        return cls(source, state.images, state.reports, state.names, deadline)

    def latest(self) -> list[BuildReport]:
        """The latest builds, the latest started first."""
        found = self._recent.get("")
        if found is None:
            found = self._recent.keep("", self._reports.recent_reports(RECENT))
        return [self._judged(report) for report in found]

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

    def build(self, key: str) -> tuple[BuildReport | None, ImageStatus]:
        """A build's report and its image's status, as they are now."""
        report = self._reports.report(key)
        return None if report is None else self._judged(report), self._images.status(key)

    def _judged(self, report: BuildReport) -> BuildReport:
        """The report, or an interrupted one if it has said "building" for too long."""
        if report.status != "building" or self._clock() - report.started < self._silent_after:
            return report
        failure = FailureReport(INTERRUPTED, SILENT, "")
        return replace(report, status="interrupted", failure=failure)
