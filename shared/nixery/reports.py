"""Build reports: what a build did, kept so that people can see it on the registry's pages.

The state's image status says whether an image can be served; a report says how it came to
be: its packages and their store paths, its closure, its layers, its manifests, its steps and
their times, and for a failure the reason and the end of Nix's log. The builder writes one at
every step, so a build under way shows where it is. Reports are stored as JSON in every mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from .job import BuildJob
from .manifests import LayerBlob, Manifest
from .state import Failure, State

Status = Literal["building", "published", "failed"]


def parse_store_name(path: str) -> tuple[str, str]:
    """(name, version) from a store path's name, split as Nix's parseDrvName does: at the
    first dash not followed by a letter."""
    name = path.rsplit("/", 1)[-1].split("-", 1)[-1]
    for i, char in enumerate(name[:-1]):
        if char == "-" and not name[i + 1].isalpha():
            return name[:i], name[i + 1 :]
    return name, ""


def report_url(base: str, key: str) -> str:
    """Where a build's page is, on a registry reached at ``base``."""
    return f"{base.rstrip('/')}/builds/{key}"


@dataclass(frozen=True)
class LayerReport:
    digest: str
    size: int  # bytes of the compressed blob
    unpacked: int  # bytes of its store paths, as Nix counts them (NAR size)
    paths: tuple[str, ...]  # none for the image's root (its symlinks to the packages)


@dataclass(frozen=True)
class FailureReport:
    kind: str
    message: str
    log: str


@dataclass(frozen=True)
class BuildReport:
    key: str
    packages: tuple[str, ...]
    system: str
    revision: str  # source@value, as resolved
    started: float  # time.time()
    status: Status
    step: str  # the current step while building, the last one after
    finished: float | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)  # package -> store path
    closure: Mapping[str, int] = field(default_factory=dict)  # store path -> NAR size
    layers: tuple[LayerReport, ...] = ()
    manifests: Mapping[str, str] = field(default_factory=dict)  # media type -> digest
    failure: FailureReport | None = None
    nonroot: bool = False

    @property
    def size(self) -> int:
        """Bytes a client downloads for the whole image (its layers, compressed)."""
        return sum(layer.size for layer in self.layers)

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildReport:
        failure = data.get("failure")
        return cls(
            key=data["key"],
            packages=tuple(data["packages"]),
            system=data["system"],
            revision=data["revision"],
            started=float(data["started"]),
            status=data["status"],
            step=data["step"],
            finished=None if data.get("finished") is None else float(data["finished"]),
            outputs=dict(data.get("outputs", {})),
            closure=dict(data.get("closure", {})),
            layers=tuple(
                LayerReport(x["digest"], x["size"], x["unpacked"], tuple(x["paths"]))
                for x in data.get("layers", [])
            ),
            manifests=dict(data.get("manifests", {})),
            failure=FailureReport(**failure) if failure else None,
            nonroot=bool(data.get("nonroot", False)),
        )


class Reporter:
    """Keeps one build's report up to date in the state, a write per step."""

    def __init__(self, state: State, job: BuildJob, clock: Callable[[], float] = time.time):
        self.state = state
        self.clock = clock
        self.report = BuildReport(
            key=job.key,
            packages=job.request.packages,
            system=job.request.arch.nix_system,
            nonroot=job.request.nonroot,
            revision=str(job.revision),
            started=clock(),
            status="building",
            step="checkout",
        )
        state.record_report(self.report)

    def update(self, **fields: Any) -> None:
        self.report = replace(self.report, **fields)
        self.state.record_report(self.report)

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

    def failed(self, failure: Failure) -> None:
        log = str(failure.detail.get("log", ""))
        self.update(
            status="failed",
            finished=failure.at,
            failure=FailureReport(failure.kind.value, failure.message, log),
        )
