"""Images: what a parsed request stands for, found in the cache or built.

This is the registry's logic without HTTP: the protocol layer parses names and references,
calls this service and turns its answers and errors into responses; the same service runs
in local mode and on Google Cloud.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import BinaryIO

from nixery.caches import BoundedCache
from nixery.errors import (
    BuildError,
    ClientGone,
    ImageLost,
    SourceUnavailable,
    StillBuilding,
    TooManyBuilds,
    TooManyWaiters,
    Transient,
    UnknownBlob,
    UnknownManifest,
    UnknownTag,
)
from nixery.job import BuildJob
from nixery.limits import client_key
from nixery.logs import BuildLog
from nixery.oci.cosign import is_signature, signed_digest
from nixery.oci.manifests import Manifest, preferred_index_type, preferred_type
from nixery.oci.referrers import referrers_index
from nixery.ports import (
    BlobStore,
    BuildQueue,
    BuildReports,
    Limiter,
    PublishedImages,
    Source,
    never,
)
from nixery.records import Failure, Published, Revision, remembered
from nixery.request import Digest, ImageRequest, Tag
from nixery.service.waiters import Waiters

log = logging.getLogger(__name__)

# Writes when a build's first waiting request was answered (its report's ``answer`` step).
_NOTES = ThreadPoolExecutor(1, thread_name_prefix="answers")
# Seconds an instance remembers that it noted a build's answer: longer than any build wait,
# so a herd is one write, and short enough that a rebuild's answer is noted too.
ANSWERED_TTL = 3600.0
# How often a pulled image's use is written down: `nixery gc` counts in days.
TOUCH_EVERY = 3600.0
TOUCH_RETRY = 60.0
# Images whose use is remembered as noted; beyond it, the notes due go (and are written again).
TOUCHED_SIZE = 100_000
# Whole manifests answered from memory, by tag and by digest; a manifest is a few KB.
WARM_SIZE = 4096
# Distinct blobs the answers may name before they are all forgotten (an image names 2-130):
# ~160 bytes each (the digest, its count, an answer's reference; tracemalloc, 64 distinct
# blobs per answer), so ~42 MB at the bound; fewer answers name fewer, as they go.
WARM_BLOBS = 64 * WARM_SIZE


@dataclass(frozen=True)
class Caller:
    """Who asks for an image: the address its new builds are counted by, and whether it still
    waits for the answer (a request for an image being built holds a server thread)."""

    address: str = ""
    gone: Callable[[], bool] = never


@dataclass(frozen=True)
class _Answer:
    """A manifest found whole (its parts, their referrers and every blob they name), as of
    a generation of the published images: it stays true while the generation does."""

    key: str  # the image's, whose use a pull by tag notes
    manifest: Manifest
    generation: int
    blobs: tuple[str, ...]  # every blob it needs


@dataclass(frozen=True)
class BlobLocation:
    size: int
    url: str | None  # where to redirect, or None to serve the bytes


class ImageService:
    def __init__(
        self,
        *,
        source: Source,
        images: PublishedImages,
        blobs: BlobStore,
        builds: BuildQueue,
        wait: float,
        failure_ttl: float,
        limiter: Limiter | None = None,
        waiters: Waiters | None = None,
        reports: BuildReports | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``limiter`` counts each client's new builds (NIXERY_CLIENT_BUILDS); ``waiters``
        bounds the requests that wait for builds (None: no bound); in ``reports``, a build's
        report notes when the request that started it was answered."""
        self.source = source
        self.images = images
        self.blobs = blobs
        self.builds = builds
        self.wait = wait
        self.failure_ttl = failure_ttl
        self.limiter = limiter
        self.waiters = waiters
        self.reports = reports
        self.clock = clock
        # key -> when its use is to be noted again, by ``clock``, the oldest first; read
        # without a lock (see ``nixery.caches`` on single dict operations)
        self._touched: dict[str, float] = {}
        self._touch_lock = threading.Lock()
        # The builds whose first answer this instance noted: a herd that waited for one
        # build is one write, not one per request.
        self._answered: BoundedCache[bool] = BoundedCache(ttl=ANSWERED_TTL)
        self._answer_lock = threading.Lock()
        # A published image never changes: once found whole, its manifest is answered from
        # these until the state's generation moves (`nixery gc`, an image forgotten) or a blob
        # it names is found gone. Read without a lock (see ``nixery.caches`` on single dict
        # operations); written under ``_warm_lock``.
        self._warm: dict[tuple[ImageRequest, Revision, str], _Answer] = {}
        self._by_digest: dict[str, tuple[int, Manifest]] = {}
        self._warm_blobs: dict[str, int] = {}  # digest -> how many answers name it
        self._warm_lock = threading.Lock()
        # Times the answers were forgotten or a blob found gone: an answer checked before is
        # not kept, even if the state's generation stayed.
        self._forgets = 0

    def manifest(
        self,
        request: ImageRequest,
        reference: Tag | Digest,
        accept: Iterable[str],
        caller: Caller = Caller(),
    ) -> Manifest:
        accept = list(accept)
        if (warm := self.warm(request, reference, accept)) is not None:
            return warm
        # Read before the image is checked: a change meanwhile has it checked again next time.
        generation, forgets = self.images.generation(), self._forgets
        if not isinstance(reference, Tag):
            return self._manifest_by_digest(reference, generation, forgets)
        if (signed := signed_digest(reference.name)) is not None:
            return self._signature(signed)
        revision = self._resolve(reference)
        media_type = _media_type(request, accept)
        job = BuildJob.of(request, revision)
        found = self._whole(self.image(job, caller), media_type)
        if found is None:
            # Its manifest or a blob is gone (deleted, or damaged and removed): build it again
            # rather than hand out an image that cannot be pulled.
            BuildLog(log, job.key).warning(
                "the image lost its manifest or a blob: building it again"
            )
            # Whatever the state's generation does (Firestore's moves every few minutes),
            # the answers in memory that name a lost blob go now.
            with self._warm_lock:
                self._forget_answers()
            self.images.forget(job.key)
            found = self._whole(self.image(job, caller), media_type)
            if found is None:
                raise ImageLost("the image was lost and is being built again; retry later")
        manifest, blobs = found
        with self._warm_lock:
            if self._forgets == forgets:
                self._keep(
                    (request, revision, media_type),
                    _Answer(job.key, manifest, generation, tuple(dict.fromkeys(blobs))),
                )
        self._touch(job.key)
        return manifest

    def warm(
        self, request: ImageRequest, reference: Tag | Digest, accept: Iterable[str]
    ) -> Manifest | None:
        """The manifest if a pull before found it whole and nothing since says it may have
        changed, else None: from memory (the tag's revision, then a dict), with no build,
        no state read and no lock other pulls wait on. Its errors are ``manifest``'s."""
        generation = self.images.generation()
        if not isinstance(reference, Tag):
            found = self._by_digest.get(reference)
            return found[1] if found is not None and found[0] == generation else None
        if signed_digest(reference.name) is not None:
            return None
        at = (request, self._resolve(reference), _media_type(request, accept))
        answer = self._warm.get(at)
        if answer is None or answer.generation != generation:
            return None
        self._touch(answer.key)
        return answer.manifest

    def _manifest_by_digest(self, digest: Digest, generation: int, forgets: int) -> Manifest:
        found = self.images.manifest(digest)
        if found is None:
            raise UnknownManifest("manifest unknown", {"digest": digest})
        with self._warm_lock:
            if self._forgets == forgets:
                if len(self._by_digest) >= WARM_SIZE:
                    del self._by_digest[next(iter(self._by_digest))]
                self._by_digest[digest] = (generation, found)
        return found

    def _keep(self, at: tuple[ImageRequest, Revision, str], answer: _Answer) -> None:
        """Under ``_warm_lock`` (readers never iterate): the oldest answer goes once there
        are WARM_SIZE, and all of them once the blobs they name are more than WARM_BLOBS."""
        if (old := self._warm.pop(at, None)) is not None:
            self._unname(old)
        if len(self._warm) >= WARM_SIZE:
            self._unname(self._warm.pop(next(iter(self._warm))))
        self._warm[at] = answer
        for digest in answer.blobs:
            self._warm_blobs[digest] = self._warm_blobs.get(digest, 0) + 1
        if len(self._warm_blobs) > WARM_BLOBS:
            self._forget_answers()

    def _unname(self, answer: _Answer) -> None:
        """Under ``_warm_lock``: the blobs of an answer that goes are named one time less."""
        for digest in answer.blobs:
            if (count := self._warm_blobs[digest]) == 1:
                del self._warm_blobs[digest]
            else:
                self._warm_blobs[digest] = count - 1

    def _forget_answers(self) -> None:
        """Under ``_warm_lock``."""
        self._warm.clear()
        self._by_digest.clear()
        self._warm_blobs.clear()
        self._forgets += 1

    def _touch(self, key: str) -> None:
        """Notes that the image was used, once per TOUCH_EVERY. Marked before the write, so
        that the pulls meanwhile do not write too (nor wait for a locked database); a write
        that fails is tried again after TOUCH_RETRY rather than an hour later, since `nixery
        gc` would see the image unused. It never fails the pull: the image is there. A pull
        that finds the use noted takes no lock."""
        now = self.clock()
        due = self._touched.get(key)
        if due is not None and now < due:
            return
        with self._touch_lock:
            due = self._touched.get(key)
            if due is not None and now < due:
                return
            if len(self._touched) >= TOUCHED_SIZE:
                # The notes due go; if too few are, the oldest too (their images' use is
                # written again sooner): a tenth at least, so that this is seldom done.
                kept = [(k, at) for k, at in self._touched.items() if now < at]
                self._touched = dict(kept[-(TOUCHED_SIZE - TOUCHED_SIZE // 10) :])
            self._touched.pop(key, None)  # to the end: the oldest notes come first
            self._touched[key] = now + TOUCH_EVERY
        try:
            self.images.touch(key, now)
        except Transient as e:
            BuildLog(log, key).warning("the image's use is not recorded: %s", e.message)
            with self._touch_lock:
                self._touched[key] = now + TOUCH_RETRY

    def _signature(self, signed: str) -> Manifest:
        """The signature of a manifest, which cosign asks for by tag (``sha256-<hex>.sig``)."""
        for referrer in self.images.referrers(signed):
            if is_signature(referrer):
                return referrer
        raise UnknownManifest("no signature for this manifest", {"digest": signed})

    def _whole(self, image: Published, media_type: str) -> tuple[Manifest, list[str]] | None:
        """The image's manifest and the blobs it needs, if it, the manifests it names (an
        index's), their referrers (the SBOM, a signature) and every blob they name are intact:
        an image is served whole or built again."""
        manifest = self.images.manifest(image.manifests[media_type])
        if manifest is None:
            return None
        found = [self.images.manifest(d) for d in manifest.children()]
        children = [c for c in found if c is not None]
        if len(children) != len(found):
            return None
        parts = [manifest, *children]
        referrers = [r for p in parts for r in self.images.referrers(p.digest)]
        blobs = [d for p in [*parts, *referrers] for d in p.blobs()]
        return (manifest, blobs) if all(self.blobs.intact(d) for d in blobs) else None

    def image(self, job: BuildJob, caller: Caller = Caller()) -> Published:
        """The published image of a job, building it if need be."""
        status = self.images.status(job.key)
        if isinstance(status, Published):
            return status
        if isinstance(status, Failure) and remembered(status, self.clock(), self.failure_ttl):
            raise _of_build(status, job)
        if status is None or isinstance(status, Failure):
            self._admit(job, caller)
        with self._waiting(job, caller) as refused:
            # Refused: the build is started or joined all the same, but not waited for.
            outcome = self._build(job, 0.0 if refused else self.wait, caller)
        if outcome is None:
            if refused:
                raise refused
            if caller.gone():
                raise ClientGone("the client hung up; the build goes on")
            raise StillBuilding("the image is still being built; retry later")
        if isinstance(outcome, Failure):
            raise _of_build(outcome, job)
        if status is None and self.reports is not None and self._first_answer(job.key):
            # Off the request's path: it costs a write, and a failed one costs nothing else.
            _NOTES.submit(self._note_answer, self.reports, job.key, self.clock())
        return outcome

    def _first_answer(self, key: str) -> bool:
        """Whether this is this instance's first answer of the build (only after a wait)."""
        with self._answer_lock:
            if self._answered.get(key):
                return False
            self._answered.keep(key, True)
            return True

    @staticmethod
    def _note_answer(reports: BuildReports, key: str, at: float) -> None:
        try:
            reports.record_answer(key, at)
        except Transient as e:
            BuildLog(log, key).warning("the answer's time is not recorded: %s", e.message)

    def _build(self, job: BuildJob, wait: float, caller: Caller) -> Published | Failure | None:
        try:
            return self.builds.build(job, wait, caller.gone)
        except Transient as e:
            BuildLog(log, job.key).warning("%s; to be retried", e.message)
            raise
        except Exception as e:
            BuildLog(log, job.key).exception("crashed")
            raise Transient("the build failed unexpectedly; retry later") from e

    def _waiting(
        self, job: BuildJob, caller: Caller
    ) -> AbstractContextManager[TooManyWaiters | None]:
        if self.waiters is None:
            return nullcontext(None)
        return self.waiters.waiting(job.key, client_key(caller.address))

    def _admit(self, job: BuildJob, caller: Caller) -> None:
        """Charges a new build to the caller, unless one of the image runs already."""
        if self.limiter is None or self.builds.running(job.key):
            return
        wait = self.limiter.admit(client_key(caller.address))
        if wait is not None:
            BuildLog(log, job.key).warning(
                "client %s: too many new builds", caller.address, extra={"client": caller.address}
            )
            raise TooManyBuilds(
                "this client has started as many new builds as it may for now; images built "
                f"before can still be pulled. Retry in {wait:.0f} seconds",
                wait,
            )

    def referrers(self, subject: Digest, artifact_type: str | None) -> bytes:
        """The index of the artifacts about ``subject``: empty when there are none, even for
        a manifest this registry never served (it cannot tell a client's typo from an image
        of another registry's, and the spec wants an empty index either way)."""
        return referrers_index(self.images.referrers(subject), artifact_type)

    def tags(self) -> list[str]:
        """The tags listed for a valid name, without building it: whether its packages exist
        is only known once its manifest is asked for."""
        with _source_unavailable():
            return self.source.tags()

    def blob(self, digest: Digest) -> BlobLocation:
        size = self.blobs.size(digest)
        if size is None or not self.blobs.intact(digest):
            self._lost(digest)
            raise UnknownBlob("blob unknown", {"digest": digest})
        return BlobLocation(size, self.blobs.url(digest))

    def open_blob(self, digest: str) -> BinaryIO:
        """The bytes of a blob that ``blob`` found, for a registry that serves them itself;
        ``UnknownBlob`` if it went since."""
        try:
            return self.blobs.open(digest)
        except UnknownBlob:
            self._lost(digest)
            raise

    def _lost(self, digest: str) -> None:
        """A blob found gone or damaged: if a manifest answered from memory names it, the
        next pull checks its image again (and builds it again). One that no answer names
        yet forgets nothing (else made-up digests would keep every answer out of memory): a
        pull that checked its image meanwhile may keep its answer, and the next GET of
        that blob forgets it."""
        if digest in self._warm_blobs:
            with self._warm_lock:
                self._forget_answers()

    def manifest_by_digest(self, digest: str) -> Manifest | None:
        return self.images.manifest(digest)

    def _resolve(self, tag: Tag) -> Revision:
        with _source_unavailable():
            revision = self.source.resolve(tag.name)
        if revision is None:
            raise UnknownTag("unknown tag", {"tag": tag.name})
        return revision


def _media_type(request: ImageRequest, accept: Iterable[str]) -> str:
    """The manifest format a client gets: an index, if the image has several platforms and
    the client takes one, else the default platform's manifest in a format it reads."""
    media_type = preferred_type(accept)
    if request.platforms:
        return preferred_index_type(accept) or media_type
    return media_type


def _of_build(failure: Failure, job: BuildJob) -> BuildError:
    """The error a failure answers, naming its build so that the reply can link to its page."""
    error = failure.error()
    error.key = job.key
    return error


@contextmanager
def _source_unavailable() -> Iterator[None]:
    """Says, in a source's failure, that the package source is what is unavailable."""
    try:
        yield
    except SourceUnavailable as e:
        log.warning("the package source is unavailable: %s", e)
        raise e.with_message(f"the package source is unavailable: {e.message}") from e
