"""Images: what a (name, reference) pair stands for, found in the cache or built.

This is the registry's logic without HTTP: the protocol layer turns its answers and errors
into responses, and the same service runs in local mode and on Google Cloud.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .builder import BuildJob
from .builds import BuildQueue
from .errors import BlobUnknown, BuildFailed, ManifestUnknown, RegistryError, Unavailable
from .manifests import Manifest, preferred_type
from .names import check_digest, check_tag, parse_name
from .sources import Revision, Source, SourceError
from .state import Failure, State
from .storage import BlobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobLocation:
    size: int
    url: str | None  # where to redirect, or None to serve the bytes


class ImageService:
    def __init__(
        self,
        *,
        source: Source,
        state: State,
        blobs: BlobStore,
        builds: BuildQueue,
        wait: float,
        failure_ttl: float,
        retry_after: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.state = state
        self.blobs = blobs
        self.builds = builds
        self.wait = wait
        self.failure_ttl = failure_ttl
        self.retry_after = retry_after
        self.clock = clock

    def manifest(self, name: str, reference: str, accept: Iterable[str]) -> Manifest:
        request = parse_name(name)
        if ":" in reference:
            found = self.state.manifest(check_digest(reference))
            if found is None:
                raise ManifestUnknown("manifest unknown", {"digest": reference})
            return found
        check_tag(reference)
        revision = self._resolve(reference)
        key = request.key(str(revision))
        image = self.state.image(key) or self._build(BuildJob(key, request, revision))
        found = self.state.manifest(image[preferred_type(accept)])
        if found is None:
            raise RegistryError("a published image lost its manifest", {"key": key})
        return found

    def tags(self, name: str) -> list[str]:
        """The tags listed for a valid name, without building it: whether its packages exist
        is only known once its manifest is asked for."""
        parse_name(name)
        try:
            return self.source.tags()
        except SourceError as e:
            raise self._unavailable(f"the package source is unavailable: {e}") from e

    def blob(self, name: str, digest: str) -> BlobLocation:
        parse_name(name)
        size = self.blobs.size(check_digest(digest))
        if size is None:
            raise BlobUnknown("blob unknown", {"digest": digest})
        return BlobLocation(size, self.blobs.url(digest))

    def _resolve(self, tag: str) -> Revision:
        try:
            revision = self.source.resolve(tag)
        except SourceError as e:
            log.warning("cannot resolve tag %s: %s", tag, e)
            raise self._unavailable(f"the package source is unavailable: {e}") from e
        if revision is None:
            raise ManifestUnknown("unknown tag", {"tag": tag})
        return revision

    def _build(self, job: BuildJob) -> dict[str, str]:
        failure = self.state.failure(job.key)
        if failure is None or self.clock() - failure.at >= self.failure_ttl:
            try:
                finished = self.builds.build(job, self.wait)
            except Exception as e:
                log.exception("build %s crashed", job.key[:12])
                raise self._unavailable("the build failed unexpectedly; retry later") from e
            if not finished:
                raise self._unavailable("the image is still being built; retry later")
            image = self.state.image(job.key)
            if image:
                return image
            failure = self.state.failure(job.key)
        if failure is None:
            raise self._unavailable("the build ended without a result; retry later")
        raise _failure_error(failure)

    def _unavailable(self, message: str) -> Unavailable:
        return Unavailable(message, headers={"Retry-After": str(self.retry_after)})


def _failure_error(failure: Failure) -> RegistryError:
    if failure.status == 404:
        return ManifestUnknown(failure.message, failure.detail)
    return BuildFailed(failure.message, failure.detail)
