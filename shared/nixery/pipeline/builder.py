"""The build pipeline: image request -> Nix -> closure -> layers -> archives -> blobs -> manifests.

The same code runs in local mode (on a thread) and in the Cloud Run builder (on a task).
Blobs are stored before the manifests that name them, and the manifests before the image is
published, so an interrupted build leaves nothing half-published, only unreferenced blobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Executor, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from nixery.blobs import store_bytes
from nixery.config import BuildSettings, cpus
from nixery.errors import (
    BuildError,
    BuildFailed,
    BuildTimedOut,
    ImageTooLarge,
    Transient,
    UnknownPackages,
)
from nixery.job import BuildJob
from nixery.logs import BuildLog
from nixery.nix.flakes import is_flake
from nixery.nix.keeper import StoreKeeper
from nixery.nix.runner import Nix
from nixery.oci.manifests import (
    CREATED,
    EMPTY_BLOB,
    LayerBlob,
    Manifest,
    artifact_manifest,
    image_config,
    image_index,
    image_manifests,
    provenance,
    sha256_digest,
)
from nixery.pipeline import archives
from nixery.pipeline.archives import Compressor, Sink
from nixery.pipeline.image_root import image_root
from nixery.pipeline.layers import plan_layers
from nixery.pipeline.progress import NullProgress, Progress, Reporter
from nixery.pipeline.runtime import runtime_config
from nixery.pipeline.sbom import SBOM_FILE, SBOM_TYPE, image_sbom
from nixery.pipeline.signing import PemSigner, signature_for
from nixery.ports import BlobStore, Signer, Source, StatePorts
from nixery.records import Failure, FlakeOrigin, Published, report_url
from nixery.request import Architecture, suggest

log = logging.getLogger(__name__)

# Part of every layer-cache key: a change to how layers are archived must not reuse old ones.
ARCHIVE_FORMAT = 3  # 3: ISA-L deflate


@contextmanager
def step(name: str, key: str, **fields: object) -> Iterator[dict[str, object]]:
    """Logs one step of a build with its duration; the caller may add fields to the record."""
    started = time.monotonic()
    record: dict[str, object] = dict(fields)
    yield record
    seconds = round(time.monotonic() - started, 3)
    details = " ".join(f"{k}={v}" for k, v in record.items())
    BuildLog(log, key).info(
        "%s done in %.2fs %s", name, seconds, details,
        extra={"step": name, "seconds": seconds, **record},
    )  # fmt: skip


@dataclass(frozen=True)
class Checkout:
    """The package set as checked out for one build, and how it is read: as a flake from
    this origin, or by its default.nix."""

    path: Path
    flake: FlakeOrigin | None


def layer_key(paths: Sequence[str], level: int) -> str:
    material = {"format": ARCHIVE_FORMAT, "gzip": level, "paths": sorted(paths)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class Builder:
    def __init__(
        self,
        *,
        source: Source,
        nix: Nix,
        blobs: BlobStore,
        state: StatePorts,
        popularity: Mapping[str, int],
        budget: int,
        pool: Executor,
        compressor: Compressor,
        nix_budget: float,
        keeper: StoreKeeper,
        max_image_size: int | None = None,
        signer: Signer | None = None,
        public_url: str | None = None,
        gzip_level: int = archives.GZIP_LEVEL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``pool`` runs layers in parallel and ``compressor`` their chunks: both are the
        process's, shared by all builds, so that concurrent builds share the cores.
        ``nix_budget`` is the seconds a build has, from its start, until Nix must be done;
        ``keeper`` keeps the Nix store bounded between builds; an image whose closure is
        larger than ``max_image_size`` bytes fails before anything of it is archived; with a
        ``signer``, each manifest is published with its signature; with a ``public_url``, the
        images' ``org.opencontainers.image.url`` names their build page there."""
        self.source = source
        self.nix = nix
        self.blobs = blobs
        self.state = state
        self.popularity = popularity
        self.budget = budget
        self.pool = pool
        self.compressor = compressor
        self.nix_budget = nix_budget
        self.keeper = keeper
        self.max_image_size = max_image_size
        self.signer = signer
        self.public_url = public_url
        self.gzip_level = gzip_level
        self.clock = clock
        self._indexed: set[str] = set()  # revisions whose package names are stored

    @classmethod
    def from_settings(
        cls,
        settings: BuildSettings,
        *,
        source: Source,
        blobs: BlobStore,
        state: StatePorts,
        popularity: Mapping[str, int],
        signer: Signer | None = None,
        private: Mapping[Path, str] | None = None,
    ) -> Builder:
        """A builder on the given adapters, with a pool and a compressor sized to the machine;
        it signs with ``signer``, or else with the key of NIXERY_SIGNING_KEY if there is one.
        ``private``: the server's directories Nix's errors must not show clients (``Nix``)."""
        cores = cpus()
        if signer is None and settings.signing_key is not None:
            signer = PemSigner.load(settings.signing_key)
        return cls(
            source=source,
            nix=Nix(settings.prepare_image, settings.nix_timeout, settings.eval_allow, private),
            blobs=blobs,
            state=state,
            popularity=popularity,
            budget=settings.layer_budget,
            pool=ThreadPoolExecutor(cores, thread_name_prefix="archive"),
            compressor=Compressor(cores),
            nix_budget=settings.nix_budget,
            keeper=StoreKeeper(settings.store_limit),
            max_image_size=settings.max_image_size,
            signer=signer,
            public_url=settings.public_url,
        )

    def run(self, job: BuildJob, enqueued: float | None = None) -> None:
        """Builds and publishes the image, or records why it cannot be built; ``enqueued``
        is when its queue took it (``time.time()``), for the report's times.

        Failures that a retry would repeat (a ``BuildError``) are recorded with the image;
        anything else (``Transient`` trouble, I/O) propagates to be retried.
        """
        if isinstance(self.state.images.status(job.key), Published):
            return  # built already: a duplicate delivery, or a request that raced the build
        started = time.monotonic()
        BuildLog(log, job.key).info(
            "starting %s for %s", "/".join(job.request.packages), job.revision,
        )  # fmt: skip
        reporter = Reporter(self.state.reports, job, self.clock, enqueued)
        deadline = started + self.nix_budget
        with self.keeper.build():  # the store is tidied after the outcome is recorded
            try:
                with step("checkout", job.key) as record, reporter.span("checkout"):
                    source_dir = self.source.checkout(job.revision)
                    flake = self.source.flake_origin(job.revision) if is_flake(source_dir) else None
                    record["flake"] = flake is not None
                checkout = Checkout(source_dir, flake)
                manifests, artifacts = self._build(job, checkout, deadline, reporter)
                with reporter.span("publish"):
                    self.state.images.publish(job.key, manifests, artifacts)
            except BuildError as e:
                failure = Failure.of(e, self.clock())
                self._fail(job, failure)
                reporter.failed(failure)
                return
            except Exception as e:  # retried: the pages must not say "building" for ever
                BuildLog(log, job.key).warning("interrupted: %r", e)
                reporter.interrupted(e, self.state.images)
                raise
            reporter.published(manifests)
            BuildLog(log, job.key).info(
                "published in %.2fs", time.monotonic() - started,
                extra={"seconds": time.monotonic() - started},
            )  # fmt: skip
            # Once the image is out: listing nixpkgs' names takes longer than the build's own
            # evaluation, and the waiting clients need none of it.
            self._index(job, checkout, deadline, NullProgress())

    def _fail(self, job: BuildJob, failure: Failure) -> None:
        BuildLog(log, job.key).warning("failed: %s", failure.message)
        self.state.images.record_failure(job.key, failure)

    def _build(
        self, job: BuildJob, checkout: Checkout, nix_deadline: float, reporter: Reporter
    ) -> tuple[list[Manifest], list[Manifest]]:
        """The image's manifests, and the artifacts that refer to them (SBOMs, signatures)."""
        if not job.request.platforms:
            manifests, artifacts = self._image(
                job, checkout, job.request.arch, nix_deadline, reporter
            )
        else:
            manifests, artifacts = self._images(job, checkout, nix_deadline, reporter)
        return manifests, artifacts + self._signatures(job.key, manifests, reporter)

    def _images(
        self, job: BuildJob, checkout: Checkout, nix_deadline: float, reporter: Reporter
    ) -> tuple[list[Manifest], list[Manifest]]:
        """Every platform's image at once, under one index; a failure of one fails them all.

        The report follows the first platform (the default's) alone. Published last, the
        default's manifests and the indexes are those the image's record names by media type;
        the other platforms' are reached through the indexes."""
        platforms = job.request.platforms
        with ThreadPoolExecutor(len(platforms), thread_name_prefix="platform") as each:
            futures = [
                each.submit(
                    self._image,
                    job,
                    checkout,
                    arch,
                    nix_deadline,
                    reporter if i == 0 else NullProgress(),
                )
                for i, arch in enumerate(platforms)
            ]
            wait(futures)
        built, artifacts = [], []
        for arch, future in zip(platforms, futures, strict=True):
            try:
                manifests, sboms = future.result()
            except BuildError as e:
                raise e.with_message(f"the {arch.nix_system} image: {e.message}") from e
            built.append((arch, manifests))
            artifacts += sboms
        with step("index", job.key):
            indexes = image_index(built)
        return [m for _, manifests in reversed(built) for m in manifests] + indexes, artifacts

    def _image(
        self,
        job: BuildJob,
        checkout: Checkout,
        arch: Architecture,
        nix_deadline: float,
        reporter: Progress,
    ) -> tuple[list[Manifest], list[Manifest]]:
        """One platform's image: its manifests in every format, and their SBOMs."""
        # Each platform's steps are told apart by a field; the key stays the build's.
        where = {"platform": arch.oci_arch} if job.request.platforms else {}
        with ExitStack() as built:  # the Nix outputs stay GC roots until the image is made
            reporter.update(step="nix")
            with step("nix", job.key, **where) as record:
                try:
                    result = built.enter_context(
                        self.nix.build(
                            checkout.path,
                            job.request.packages,
                            arch.nix_system,
                            nix_deadline,
                            flake=checkout.flake,
                            optional=job.request.optional,
                            timed=reporter.span,
                        )
                    )
                except UnknownPackages as e:
                    names = self.state.names.package_names(str(job.revision))
                    if names is None:  # the revision's first build: listed for the suggestions
                        names = self._index(job, checkout, nix_deadline, reporter) or []
                    raise UnknownPackages(e.names, {n: suggest(n, names) for n in e.names}) from e
                record["paths"] = len(result.closure)
                if result.flake is not None:
                    reporter.update(flake=result.flake, left_out=result.absent)
                reporter.closure(
                    result.outputs, {p.path: p.nar_size for p in result.closure.values()}
                )
                if result.environments or result.plain:
                    reporter.update(environments=result.environments, plain=result.plain)
                size = sum(p.nar_size for p in result.closure.values())
                if self.max_image_size is not None and size > self.max_image_size:
                    raise ImageTooLarge(size, self.max_image_size)
            with step("layering", job.key, **where) as record, reporter.span("layer"):
                closure = {
                    p.path: {"narSize": p.nar_size, "references": p.references}
                    for p in result.closure.values()
                }
                roots = sorted(set(result.outputs.values()))
                groups = plan_layers(closure, roots, self.popularity, self.budget - 1)
                record["layers"] = len(groups) + 1
            reporter.update(step="archives")
            with step("archives", job.key, **where) as record:
                layers, fresh = self._store_layers(groups, reporter)
                root_entries = image_root(list(result.outputs.values()), job.request.nonroot)
                layers.append(
                    self._archive(
                        lambda out: archives.write_entries_layer(
                            root_entries, out, self.compressor, self.gzip_level
                        ),
                        reporter,
                    )
                )
                record.update(new=fresh, reused=len(groups) - fresh)
            reporter.layers(groups, layers)
        title = "/".join(job.request.packages)
        with step("sbom", job.key, **where) as record, reporter.span("sbom"):
            try:
                sbom = image_sbom(
                    title=title,
                    revision=job.revision,
                    system=arch.nix_system,
                    roots=result.outputs.values(),
                    closure=result.closure,
                    meta=result.meta,
                    flake=result.flake,
                    environments=result.environments,
                )
            except (ValueError, KeyError) as e:
                # What Nix said of the closure cannot be described (a hash in a form unknown
                # here): the same next time, so a failed build, remembered like one.
                raise BuildFailed(f"the image's SBOM could not be made: {e}") from e
            store_bytes(self.blobs, sha256_digest(sbom), sbom)
            store_bytes(self.blobs, sha256_digest(EMPTY_BLOB), EMPTY_BLOB)
            record["bytes"] = len(sbom)
        reporter.update(step="manifests")
        with step("manifests", job.key, **where), reporter.span("manifests"):
            # The URL, not the kind; a path source has neither ("path").
            source = job.revision.source.partition(":")[2]
            page = report_url(self.public_url, job.key) if self.public_url else None
            annotations = provenance(title, source, job.revision.value, page)
            runtime = runtime_config(
                job.request, root_entries, result.main_programs, result.environments
            )
            config = image_config(arch.oci_arch, layers, runtime, labels=annotations)
            store_bytes(self.blobs, sha256_digest(config), config)
            manifests = image_manifests(config, layers, annotations)
            about = {"org.opencontainers.image.created": CREATED}
            sboms = [artifact_manifest(SBOM_TYPE, sbom, SBOM_FILE, m, about) for m in manifests]
        return manifests, sboms

    def _signatures(
        self, key: str, manifests: list[Manifest], reporter: Progress
    ) -> list[Manifest]:
        """A signature of each manifest (an index's too), with a signer."""
        if self.signer is None:
            return []
        signatures = []
        with step("signatures", key), reporter.span("signatures"):
            for manifest in manifests:
                signature = signature_for(manifest, self.signer)
                for blob in signature.blobs:
                    store_bytes(self.blobs, sha256_digest(blob), blob)
                signatures.append(signature.manifest)
        return signatures

    def _index(
        self, job: BuildJob, checkout: Checkout, nix_deadline: float, reporter: Progress
    ) -> list[str] | None:
        """Lists the package set's names for the search box, once per revision; the names
        listed now, if any. It never fails the build: a set whose names cannot be listed gets
        an empty list, and passing trouble (or running out of time) leaves them to be listed
        by the revision's next build."""
        revision = str(job.revision)
        if revision in self._indexed or self.state.names.package_names(revision) is not None:
            self._indexed.add(revision)
            return None
        with step("names", job.key) as record, reporter.span("names"):
            try:
                names = self.nix.attribute_names(checkout.path, job.request.arch.nix_system,
                                                 nix_deadline, checkout.flake)  # fmt: skip
            except (BuildTimedOut, Transient) as e:
                BuildLog(log, job.key).warning("the package names are left for later: %s",
                                               e.message)  # fmt: skip
                return None
            except BuildError as e:
                BuildLog(log, job.key).warning("the package names cannot be listed: %s",
                                               e.message)  # fmt: skip
                names = []
            record["names"] = len(names)
        self.state.names.record_package_names(revision, names)
        self._indexed.add(revision)
        return names

    def _store_layers(
        self, groups: list[list[str]], reporter: Progress
    ) -> tuple[list[LayerBlob], int]:
        """Each group's layer, from the layer cache or archived, all in parallel (a cache
        lookup is a database round trip); returns them in order, and how many were new."""
        futures = [self.pool.submit(self._store_layer, paths, reporter) for paths in groups]
        # At the first failure the layers not started yet are dropped (a storage that stopped
        # answering would fail each in turn, a timeout each), and those under way end before
        # the failure is raised: none keeps writing after its build has failed.
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
        wait(futures)
        for future in futures:
            if not future.cancelled() and (error := future.exception()) is not None:
                raise error
        layers = [future.result() for future in futures]
        return [layer for layer, _ in layers], sum(fresh for _, fresh in layers)

    def _archive(self, write: Callable[[Sink], LayerBlob], reporter: Progress) -> LayerBlob:
        """Streams a layer straight into the blob store: no local copy, even of a large one.
        Its upload is timed from the end of its bytes (a large blob's earlier chunks go up
        while it is archived)."""
        writer = self.blobs.writer()
        try:
            began = self.clock()
            layer = write(writer)
            archived = self.clock()
            reporter.add("archive", began, archived)
            writer.commit(layer.digest)
            reporter.add("upload", archived, self.clock())
        finally:
            writer.cancel()
        return layer

    def _store_layer(self, paths: Sequence[str], reporter: Progress) -> tuple[LayerBlob, bool]:
        """The layer of the store paths, and whether it was new: one archived before is
        reused while its blob is intact; a new one is recorded once its blob is stored."""
        key = layer_key(paths, self.gzip_level)
        cached = self.state.layers.layer(key)
        if cached and self.blobs.intact(cached.digest):
            return cached, False
        layer = self._archive(
            lambda out: archives.write_store_layer(paths, out, self.compressor, self.gzip_level),
            reporter,
        )
        self.state.layers.record_layer(key, layer)
        return layer, True
