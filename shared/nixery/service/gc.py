"""Garbage collection: what no recently used image needs goes, in both modes alike.

Everything here is content-addressed and rebuilt on demand, so keeping it forever buys
nothing but cost. An image is live while it was published or pulled (by tag) within
``max_age``; what a live image references (its manifests, those an index of several
platforms names, the artifacts about them: SBOMs and signatures, all their blobs, and the
layer-cache rows of those blobs) is kept, and the rest is collected: images not used since,
manifests no live image names, layer-cache rows of collected blobs, blobs nothing live
references, failures no longer remembered, and the reports of builds that never finished
(interrupted, or silent) once older than ``grace``. Of the package sets' lists of names (for
the search box), those of the newest ``KEEP_NAME_LISTS`` revisions stay: search is over the
current revision, and suggestions for a build of an old one are a nicety.

Safe while the registry serves: a blob younger than ``grace`` (a build's deadline, twice)
is never collected, so a build under way keeps what it has written before it publishes;
a build that reused a cached layer in the instant its blob was collected publishes an image
whose next pull finds the blob missing and builds it again (``ImageService`` checks every
blob before it serves a manifest). Image records go before the manifests and blobs they
name, so no published image ever names something already gone. A dry run (the default)
reports what would go and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from nixery.ports import BlobInventory, Inventory
from nixery.records import StoredBlob

log = logging.getLogger(__name__)

KEEP_NAME_LISTS = 4


@dataclass
class GcReport:
    images: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    name_lists: list[str] = field(default_factory=list)  # revisions
    reports: list[str] = field(default_factory=list)  # of builds that never finished
    blobs: list[StoredBlob] = field(default_factory=list)
    kept_images: int = 0
    kept_blobs: int = 0

    @property
    def freed(self) -> int:
        return sum(b.size for b in self.blobs)

    def summary(self, applied: bool) -> str:
        verb = "collected" if applied else "would collect"
        return (
            f"{verb} {len(self.images)} images (kept {self.kept_images}), "
            f"{len(self.manifests)} manifests, {len(self.layers)} layer-cache rows, "
            f"{len(self.failures)} failures, {len(self.name_lists)} package name lists, "
            f"{len(self.reports)} unfinished build reports, "
            f"{len(self.blobs)} blobs "
            f"({self.freed / 1e6:.1f} MB; kept {self.kept_blobs})"
        )


def collect(
    inventory: Inventory,
    blobs: BlobInventory,
    *,
    max_age: float,
    grace: float,
    failure_ttl: float,
    now: float,
    apply: bool = False,
    progress: Callable[[str], None] = log.info,
) -> GcReport:
    report = GcReport()
    live_manifests: set[str] = set()
    live_images: set[str] = set()
    for image in inventory.images():
        if image.used >= now - max_age:
            live_manifests.update(image.manifests)
            live_images.add(image.key)
            report.kept_images += 1
        else:
            report.images.append(image.key)
    live_blobs: set[str] = set()
    pending = list(live_manifests)
    while pending:  # an index keeps the manifests it names, and they their blobs
        manifest = inventory.manifest(pending.pop())
        if manifest is not None:
            live_blobs.update(manifest.blobs())
            children = set(manifest.children()) - live_manifests
            live_manifests |= children
            pending += children
    report.manifests = [d for d in inventory.manifest_digests() if d not in live_manifests]
    report.layers = [key for key, digest in inventory.layer_rows() if digest not in live_blobs]
    failures = list(inventory.failures())
    report.failures = [key for key, at in failures if at < now - failure_ttl]
    # A report saying "building" or "interrupted" for longer than any build takes: its build
    # stopped (a full disk, a restart), and no image or failure takes its page with it. A
    # live image's or a remembered failure's is kept: it is their page.
    kept = live_images | {key for key, _ in failures}
    report.reports = [key for key, started in inventory.unfinished_reports()
                      if started < now - grace and key not in kept]  # fmt: skip
    report.name_lists = list(inventory.name_lists())[KEEP_NAME_LISTS:]
    progress(f"{len(report.images)} images to collect, {len(live_blobs)} blobs in use")
    for blob in blobs.blobs():
        if blob.digest in live_blobs or blob.created >= now - grace:
            report.kept_blobs += 1
        else:
            report.blobs.append(blob)
    if apply:
        # Records first: nothing published names what is about to go.
        inventory.delete(images=report.images, failures=report.failures, reports=report.reports)
        inventory.delete(
            manifests=report.manifests, layers=report.layers, name_lists=report.name_lists
        )
        for i, blob in enumerate(report.blobs, 1):
            blobs.delete(blob.digest)
            if i % 1000 == 0:
                progress(f"{i} of {len(report.blobs)} blobs deleted")
    progress(report.summary(apply))
    return report
