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
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
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
from nixery.records import Failure, Published, report_url
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

    def run(self, job: BuildJob) -> None:
        """Builds and publishes the image, or records why it cannot be built.

        Failures that a retry would repeat (a ``BuildError``) are recorded with the image;
        anything else (``Transient`` trouble, I/O) propagates to be retried.
        """
        if isinstance(self.state.images.status(job.key), Published):
            return  # built already: a duplicate delivery, or a request that raced the build
        started = time.monotonic()
        BuildLog(log, job.key).info(
            "starting %s for %s", "/".join(job.request.packages), job.revision,
        )  # fmt: skip
        reporter = Reporter(self.state.reports, job, self.clock)
        with self.keeper.build():  # the store is tidied after the outcome is recorded
            try:
                manifests, artifacts = self._build(job, started + self.nix_budget, reporter)
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

    def _fail(self, job: BuildJob, failure: Failure) -> None:
        BuildLog(log, job.key).warning("failed: %s", failure.message)
        self.state.images.record_failure(job.key, failure)

    def _build(
        self, job: BuildJob, nix_deadline: float, reporter: Reporter
    ) -> tuple[list[Manifest], list[Manifest]]:
        """The image's manifests, and the artifacts that refer to them (SBOMs, signatures)."""
        with step("checkout", job.key):
            source_dir = self.source.checkout(job.revision)
        self._index(job, source_dir, nix_deadline)
        if not job.request.platforms:
            manifests, artifacts = self._image(
                job, source_dir, job.request.arch, nix_deadline, reporter
            )
        else:
            manifests, artifacts = self._images(job, source_dir, nix_deadline, reporter)
        return manifests, artifacts + self._signatures(job.key, manifests)

    def _images(
        self, job: BuildJob, source_dir: Path, nix_deadline: float, reporter: Reporter
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
                    source_dir,
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
        source_dir: Path,
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
                            source_dir, job.request.packages, arch.nix_system, nix_deadline
                        )
                    )
                except UnknownPackages as e:
                    names = self.state.names.package_names(str(job.revision)) or []
                    raise UnknownPackages(e.names, {n: suggest(n, names) for n in e.names}) from e
                record["paths"] = len(result.closure)
                reporter.closure(
                    result.outputs, {p.path: p.nar_size for p in result.closure.values()}
                )
                if result.environments or result.plain:
                    reporter.update(environments=result.environments, plain=result.plain)
                size = sum(p.nar_size for p in result.closure.values())
                if self.max_image_size is not None and size > self.max_image_size:
                    raise ImageTooLarge(size, self.max_image_size)
            with step("layering", job.key, **where) as record:
                closure = {
                    p.path: {"narSize": p.nar_size, "references": p.references}
                    for p in result.closure.values()
                }
                roots = sorted(set(result.outputs.values()))
                groups = plan_layers(closure, roots, self.popularity, self.budget - 1)
                record["layers"] = len(groups) + 1
            reporter.update(step="archives")
            with step("archives", job.key, **where) as record:
                layers, fresh = self._store_layers(groups)
                root_entries = image_root(list(result.outputs.values()), job.request.nonroot)
                layers.append(
                    self._archive(
                        lambda out: archives.write_entries_layer(
                            root_entries, out, self.compressor, self.gzip_level
                        )
                    )
                )
                record.update(new=fresh, reused=len(groups) - fresh)
            reporter.layers(groups, layers)
        title = "/".join(job.request.packages)
        with step("sbom", job.key, **where) as record:
            try:
                sbom = image_sbom(
                    title=title,
                    revision=job.revision,
                    system=arch.nix_system,
                    roots=result.outputs.values(),
                    closure=result.closure,
                    meta=result.meta,
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
        with step("manifests", job.key, **where):
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

    def _signatures(self, key: str, manifests: list[Manifest]) -> list[Manifest]:
        """A signature of each manifest (an index's too), with a signer."""
        if self.signer is None:
            return []
        signatures = []
        with step("signatures", key):
            for manifest in manifests:
                signature = signature_for(manifest, self.signer)
                for blob in signature.blobs:
                    store_bytes(self.blobs, sha256_digest(blob), blob)
                signatures.append(signature.manifest)
        return signatures

    def _index(self, job: BuildJob, source_dir: Path, nix_deadline: float) -> None:
        """Lists the package set's names for the search box, once per revision. It never fails
        the build: a set whose names cannot be listed gets an empty list, and passing trouble
        (or running out of time) leaves them to be listed by the revision's next build."""
        revision = str(job.revision)
        if revision in self._indexed or self.state.names.package_names(revision) is not None:
            self._indexed.add(revision)
            return
        with step("names", job.key) as record:
            try:
                names = self.nix.attribute_names(source_dir, job.request.arch.nix_system,
                                                 nix_deadline)  # fmt: skip
            except (BuildTimedOut, Transient) as e:
                BuildLog(log, job.key).warning("the package names are left for later: %s",
                                               e.message)  # fmt: skip
                return
            except BuildError as e:
                BuildLog(log, job.key).warning("the package names cannot be listed: %s",
                                               e.message)  # fmt: skip
                names = []
            record["names"] = len(names)
        self.state.names.record_package_names(revision, names)
        self._indexed.add(revision)

    def _store_layers(self, groups: list[list[str]]) -> tuple[list[LayerBlob], int]:
        """Archives the groups not archived before, in parallel; returns them in order."""
        found: dict[int, LayerBlob] = {}
        for i, paths in enumerate(groups):
            cached = self.state.layers.layer(layer_key(paths, self.gzip_level))
            if cached and self.blobs.intact(cached.digest):
                found[i] = cached
        pending = {
            i: self.pool.submit(self._store_layer, paths)
            for i, paths in enumerate(groups)
            if i not in found
        }
        # All of them end before the first failure is raised: none keeps writing after its
        # build has failed.
        wait(pending.values())
        for i, future in pending.items():
            found[i] = future.result()
            self.state.layers.record_layer(layer_key(groups[i], self.gzip_level), found[i])
        return [found[i] for i in range(len(groups))], len(pending)

    def _archive(self, write: Callable[[Sink], LayerBlob]) -> LayerBlob:
        """Streams a layer straight into the blob store: no local copy, even of a large one."""
        writer = self.blobs.writer()
        try:
            layer = write(writer)
            writer.commit(layer.digest)
        finally:
            writer.cancel()
        return layer

    def _store_layer(self, paths: Sequence[str]) -> LayerBlob:
        return self._archive(
            lambda out: archives.write_store_layer(paths, out, self.compressor, self.gzip_level)
        )
