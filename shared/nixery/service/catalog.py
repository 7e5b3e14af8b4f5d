"""What the registry's pages show: a read model over the build reports and package names.

The pages are read far more often than builds change, and by anyone: a busy front page must
not read 30 reports from the database on every view. So the latest builds and whether a
layer is shared are kept in memory for seconds, a revision's package names (which never
change) for as long as there is room; a build's own page is read fresh, since it follows a
build under way.
"""

from __future__ import annotations

from nixery.caches import BoundedCache
from nixery.errors import NixeryError
from nixery.ports import BuildReports, PackageNames, PublishedImages, Source, StatePorts
from nixery.records import BuildReport, ImageStatus, Revision

# Builds on the front page.
RECENT = 30
# Seconds the latest builds, and whether a layer is shared, are kept in memory.
FRONT_TTL = 5.0
SHARED_TTL = 60.0


class Catalog:
    def __init__(
        self, source: Source, images: PublishedImages, reports: BuildReports, names: PackageNames
    ) -> None:
        self.source = source
        self._images = images
        self._reports = reports
        self._names = names
        self._recent: BoundedCache[list[BuildReport]] = BoundedCache(1, ttl=FRONT_TTL)
        self._shared: BoundedCache[bool] = BoundedCache(ttl=SHARED_TTL)
        self._names_of: BoundedCache[list[str]] = BoundedCache(4)

    @classmethod
    def of(cls, source: Source, state: StatePorts) -> Catalog:
        return cls(source, state.images, state.reports, state.names)

    def latest(self) -> list[BuildReport]:
        """The latest builds, the latest started first."""
        found = self._recent.get("")
        if found is None:
            found = self._recent.keep("", self._reports.recent_reports(RECENT))
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
        return self._reports.report(key), self._images.status(key)
