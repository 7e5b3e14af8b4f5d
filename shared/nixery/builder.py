"""The build pipeline: image request -> Nix -> closure -> layers -> archives -> blobs -> manifests.

The same code runs in local mode (on a thread) and in the Cloud Run builder (on a task).
Blobs are stored before the manifests that name them, and the manifests before the image is
published, so an interrupted build leaves nothing half-published, only unreferenced blobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import archives
from .archives import Entry, LayerBlob
from .config import Config
from .imageroot import image_root
from .layers import plan_layers
from .manifests import Manifest, image_config, image_manifests, sha256_digest
from .names import ARCHITECTURES, ImageRequest
from .nix import Nix, NixError, UnknownPackages
from .popularity import load_popularity
from .sources import Revision, Source
from .state import Failure, State
from .storage import BlobStore

log = logging.getLogger(__name__)

# Part of every layer-cache key: a change to how layers are archived must not reuse old ones.
ARCHIVE_FORMAT = 2


@dataclass(frozen=True)
class BuildJob:
    """One image to build: everything a builder needs, and nothing it must look up."""

    key: str
    request: ImageRequest
    revision: Revision

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "packages": list(self.request.packages),
            "system": self.request.arch.nix_system,
            "revision": {"source": self.revision.source, "value": self.revision.value},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildJob:
        """The job a task carries. Its key is recomputed, so a forged task cannot publish an
        image under a key other than its own content's."""
        arch = next((a for a in ARCHITECTURES if a.nix_system == data["system"]), None)
        if arch is None:
            raise ValueError(f"unknown system {data['system']!r}")
        packages = data["packages"]
        if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
            raise ValueError("packages must be a list of names")
        request = ImageRequest(tuple(sorted(set(packages))), arch)
        revision = Revision(str(data["revision"]["source"]), str(data["revision"]["value"]))
        job = cls(request.key(str(revision)), request, revision)
        if job.key != data.get("key"):
            raise ValueError("the job's key does not match its content")
        return job


@contextmanager
def step(name: str, key: str, **fields: object) -> Iterator[dict[str, object]]:
    """Logs one step of a build with its duration; the caller may add fields to the record."""
    started = time.monotonic()
    record: dict[str, object] = dict(fields)
    yield record
    seconds = round(time.monotonic() - started, 3)
    details = " ".join(f"{k}={v}" for k, v in record.items())
    log.info(
        "build %s: %s done in %.2fs %s",
        key[:12], name, seconds, details,
        extra={"build_key": key, "step": name, "seconds": seconds, **record},
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
        state: State,
        popularity: Mapping[str, int],
        budget: int,
        pool: Executor,
        gzip_level: int = archives.GZIP_LEVEL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.nix = nix
        self.blobs = blobs
        self.state = state
        self.popularity = popularity
        self.budget = budget
        self.pool = pool
        self.gzip_level = gzip_level
        self.clock = clock

    @classmethod
    def from_config(
        cls, config: Config, *, source: Source, blobs: BlobStore, state: State
    ) -> Builder:
        """A builder as a service's configuration describes it, on the given adapters."""
        return cls(
            source=source,
            nix=Nix(config.prepare_image, config.nix_timeout),
            blobs=blobs,
            state=state,
            popularity=load_popularity(config.popularity_url),
            budget=config.layer_budget,
            pool=ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="archive"),
        )

    def run(self, job: BuildJob) -> None:
        """Builds and publishes the image, or records why it cannot be built.

        Failures that a retry would repeat (unknown packages, Nix errors) are recorded in the
        state; anything else (I/O, an unreachable source) propagates to be retried.
        """
        if self.state.image(job.key):
            return  # built already: a duplicate delivery, or a request that raced the build
        started = time.monotonic()
        log.info(
            "build %s: starting %s for %s",
            job.key[:12], "/".join(job.request.packages), job.revision,
            extra={"build_key": job.key},
        )  # fmt: skip
        try:
            manifests = self._build(job)
        except UnknownPackages as e:
            self._fail(job, Failure(404, e.message, {"packages": e.names}, self.clock()))
            return
        except NixError as e:
            self._fail(job, Failure(500, e.message, {"log": e.log_tail}, self.clock()))
            return
        self.state.publish(job.key, manifests)
        log.info(
            "build %s: published in %.2fs",
            job.key[:12], time.monotonic() - started,
            extra={"build_key": job.key, "seconds": time.monotonic() - started},
        )  # fmt: skip

    def _fail(self, job: BuildJob, failure: Failure) -> None:
        log.warning("build %s: failed: %s", job.key[:12], failure.message,
                    extra={"build_key": job.key})  # fmt: skip
        self.state.record_failure(job.key, failure)

    def _build(self, job: BuildJob) -> list[Manifest]:
        key = job.key
        with step("checkout", key):
            source_dir = self.source.checkout(job.revision)
        with ExitStack() as built:  # the Nix outputs stay GC roots until the image is made
            with step("nix", key) as record:
                system = job.request.arch.nix_system
                result = built.enter_context(
                    self.nix.build(source_dir, job.request.packages, system)
                )
                record["paths"] = len(result.closure)
            with step("layering", key) as record:
                closure = {
                    p.path: {"narSize": p.nar_size, "references": p.references}
                    for p in result.closure.values()
                }
                roots = sorted(set(result.outputs.values()))
                groups = plan_layers(closure, roots, self.popularity, self.budget - 1)
                record["layers"] = len(groups) + 1
            with step("archives", key) as record:
                layers, fresh = self._store_layers(groups)
                root_entries = image_root(list(result.outputs.values()))
                layers.append(self._archive(archives.write_entries_layer, root_entries))
                record.update(new=fresh, reused=len(groups) - fresh)
        with step("manifests", key):
            has_bash = any(e.path == "bin/bash" for e in root_entries)
            config = image_config(job.request.arch.oci_arch, layers, has_bash=has_bash)
            self.blobs.put_bytes(sha256_digest(config), config)
            return image_manifests(config, layers)

    def _store_layers(self, groups: list[list[str]]) -> tuple[list[LayerBlob], int]:
        """Archives the groups not archived before, in parallel; returns them in order."""
        found: dict[int, LayerBlob] = {}
        for i, paths in enumerate(groups):
            cached = self.state.layer(layer_key(paths, self.gzip_level))
            if cached and self.blobs.size(cached.digest) == cached.size:
                found[i] = cached
        pending = {
            i: self.pool.submit(self._archive, archives.write_store_layer, paths)
            for i, paths in enumerate(groups)
            if i not in found
        }
        for i, future in pending.items():
            found[i] = future.result()
            self.state.record_layer(layer_key(groups[i], self.gzip_level), found[i])
        return [found[i] for i in range(len(groups))], len(pending)

    def _archive(
        self,
        write: Callable[..., LayerBlob],
        content: Sequence[str] | Sequence[Entry],
    ) -> LayerBlob:
        fd, name = tempfile.mkstemp(dir=self.blobs.scratch, suffix=".layer")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                layer = write(content, out, self.gzip_level)
            self.blobs.put_file(layer.digest, path)
        finally:
            path.unlink(missing_ok=True)
        return layer
