"""Records: what the stores keep, the same in every adapter.

An image's status (published, failed, being built), a remembered failure, a build's report,
a package set's revision, the gc's view of images and blobs. Each record that a store keeps
as a document or a row has one codec here (``encode``/``decode``), so SQLite and
Firestore store the same fields the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from nixery.errors import BuildError, BuildFailed, BuildTimedOut, ImageTooLarge, UnknownPackages

# What is kept of a failure, in every store: a Firestore document holds at most 1 MiB, and
# nobody reads more of a log in an error reply. JSON may escape a character into 6 bytes, so
# even a worst-case log stays far below that. A log keeps its end, where Nix puts the error.
MAX_MESSAGE = 4096
MAX_LOG = 32 << 10
# The attribute names of one revision kept for the search box: nixpkgs has about 120,000
# with its nested sets, some 3 MB, over a Firestore document's 1 MiB; their start is kept.
MAX_PACKAGE_NAMES = 900_000  # characters, joined by newlines
# Attempts a builder may give back for a passing cause (``release``) since the build started
# afresh before it is recorded as failed: the queue's backoff makes 5 about five minutes
# (10 + 20 + 40 + 80 s between them), past which the fault is no passing one, and a failure
# is retried by a pull after NIXERY_FAILURE_TTL rather than by the queue for an hour.
MAX_RELEASES = 5


def given_up(releases: int, cause: str) -> str:
    """A build's failure message after its ``releases``th release for ``cause``."""
    return f"the build was given back {releases} times in a row for a passing fault: {cause}"


def _bounded(text: str, limit: int, keep_end: bool) -> str:
    if len(text) <= limit:
        return text
    if keep_end:
        return f"[nixery: {len(text) - limit} characters cut]\n" + text[-limit:]
    return text[:limit] + f" [nixery: {len(text) - limit} characters cut]"


class FailureKind(StrEnum):
    """Why an image could not be built; what is stored, never an HTTP status."""

    UNKNOWN_PACKAGES = "unknown_packages"
    BUILD_ERROR = "build_error"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"


@dataclass(frozen=True)
class Failure:
    """A finished build that produced no image, remembered so it is not retried every pull."""

    kind: FailureKind
    message: str
    detail: Mapping[str, Any]
    at: float  # time.time() when it failed

    @classmethod
    def of(cls, error: BuildError, at: float) -> Failure:
        """The failure to remember for an error, its message and log bounded in size."""
        detail = dict(error.detail or {})
        if isinstance(detail.get("log"), str):
            detail["log"] = _bounded(detail["log"], MAX_LOG, keep_end=True)
        message = _bounded(error.message, MAX_MESSAGE, keep_end=False)
        if isinstance(error, UnknownPackages):
            kind = FailureKind.UNKNOWN_PACKAGES
        elif isinstance(error, ImageTooLarge):
            kind = FailureKind.TOO_LARGE
        elif isinstance(error, BuildTimedOut):
            kind = FailureKind.TIMEOUT
        else:
            kind = FailureKind.BUILD_ERROR
        return cls(kind, message, detail, at)

    def error(self) -> BuildError:
        """The error this failure answers, as it was raised when the build failed."""
        if self.kind is FailureKind.UNKNOWN_PACKAGES:
            packages = list(self.detail.get("packages", []))
            return UnknownPackages(packages, self.detail.get("suggestions"))
        if self.kind is FailureKind.TOO_LARGE:
            return ImageTooLarge(int(self.detail["size"]), int(self.detail["limit"]))
        error_type = BuildTimedOut if self.kind is FailureKind.TIMEOUT else BuildFailed
        return error_type(self.message, str(self.detail.get("log", "")))

    def encode(self) -> tuple[str, str, str, float]:
        """The fields a store keeps: kind, message, detail (as JSON) and time."""
        return self.kind.value, self.message, json.dumps(self.detail), self.at

    @classmethod
    def decode(cls, kind: str | None, message: str, detail: str, at: float) -> Failure:
        # Records from before kinds were stored were build errors.
        return cls(FailureKind(kind or FailureKind.BUILD_ERROR), message, json.loads(detail), at)


@dataclass(frozen=True)
class Published:
    """A built image: its manifests' digests by media type."""

    manifests: Mapping[str, str]


@dataclass(frozen=True)
class Pending:
    """A build under way (only where builds outlive a request: Google Cloud mode)."""

    lease_left: float  # seconds, by the store's clock when it answered; <= 0 once lapsed
    # Why an attempt stopped short, for a passing cause, while the queue retries it; empty
    # if none did since the build started afresh.
    cause: str = ""
    # A builder holds it: its heartbeat changes the record every third of the lease.
    owned: bool = False


ImageStatus = Published | Failure | Pending | None


def bounded_names(names: Sequence[str]) -> list[str]:
    """As many of the sorted names as a store keeps (MAX_PACKAGE_NAMES)."""
    kept: list[str] = []
    total = 0
    for name in sorted(names):
        total += len(name) + 1
        if total > MAX_PACKAGE_NAMES:
            break
        kept.append(name)
    return kept


def encode_names(names: Sequence[str]) -> str:
    """A revision's package names as a store keeps them: sorted, bounded, one a line."""
    return "\n".join(bounded_names(names))


def decode_names(text: str) -> list[str]:
    return text.split("\n") if text else []


def remembered(failure: Failure, now: float, ttl: float) -> bool:
    """Whether a failure still answers requests, or is old enough to try the build again."""
    return now - failure.at < ttl


@dataclass(frozen=True)
class Revision:
    """An exact version of a package set: equal revisions always mean identical trees."""

    source: str
    value: str

    def __str__(self) -> str:
        return f"{self.source}@{self.value}"


@dataclass(frozen=True)
class ImageRecord:
    key: str
    manifests: tuple[str, ...]  # digests
    used: float  # time.time() of its publication or its last pull by tag


@dataclass(frozen=True)
class StoredBlob:
    digest: str
    size: int
    created: float  # time.time()


def report_url(base: str, key: str) -> str:
    """Where a build's page is, on a registry reached at ``base``."""
    return f"{base.rstrip('/')}/builds/{key}"


# --- Build reports ------------------------------------------------------------------


# "interrupted": stopped by a transient fault (a full disk, a database or service down, a
# restart); nothing of it is remembered, so the next pull builds it again.
Status = Literal["building", "published", "failed", "interrupted"]


@dataclass(frozen=True)
class LayerReport:
    digest: str
    size: int  # bytes of the compressed blob
    unpacked: int  # bytes of its store paths, as Nix counts them (NAR size)
    paths: tuple[str, ...]  # none for the image's root (its symlinks to the packages)


# The kind of an interrupted build's ``FailureReport``; a failed one's is a ``FailureKind``.
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Environment:
    """An interpreter's environment (its package set's ``withPackages``), which an image holds
    in place of the packages it names in ``members``: their interpreter sees them all."""

    language: str  # the interpreter's attribute in its set: python, perl, lua, ruby, ghc
    interpreter: str  # its derivation's name, e.g. python3-3.11.5
    path: str  # the environment's store path
    members: tuple[str, ...]  # the name's packages it holds, the interpreter's own included
    contents: tuple[str, ...] = ()  # the store paths of the set's packages among them
    program: str | None = None  # its meta.mainProgram

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Environment:
        return cls(
            str(data["language"]),
            str(data["interpreter"]),
            str(data["path"]),
            tuple(data["members"]),
            tuple(data.get("contents", ())),
            data.get("program"),
        )


@dataclass(frozen=True)
class FailureReport:
    kind: str
    message: str
    log: str


@dataclass(frozen=True)
class FlakeOrigin:
    """What a flake read from a revision knows of itself: ``self.rev`` (the commit, for a git
    source) and ``self.lastModified`` (the commit's time; 0 where there is none); and the
    revision's value, by which its copy in the store is known (a path source's directory
    stays the same when its content changes)."""

    revision: str
    rev: str | None
    last_modified: int


@dataclass(frozen=True)
class FlakeInput:
    """An input of a flake as its flake.lock pins it: the locked URL and the NAR hash Nix
    checks what it fetches against."""

    name: str  # the lock's node name
    url: str
    nar_hash: str


@dataclass(frozen=True)
class FlakeLock:
    """A package set read as a flake: its own tree's NAR hash and its locked inputs."""

    nar_hash: str
    inputs: tuple[FlakeInput, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FlakeLock:
        return cls(data["nar_hash"], tuple(FlakeInput(**i) for i in data.get("inputs", ())))


@dataclass(frozen=True)
class StepTime:
    """When one step of a build began and ended (``time.time()``). A step done several times
    over (each layer's upload) spans from the first beginning to the last end."""

    step: str
    began: float
    ended: float


# The steps of a build in their order, as reports name them: waiting in the queue (enqueued
# until a builder picks it up), the package set's checkout, Nix's evaluation and
# realisation, planning the layers, archiving them, uploading the blobs (what is not
# streamed while archiving), the SBOM, the manifests, their signatures, publishing, and the
# wait of the first client answered after the publication.
STEPS = (
    "queue", "checkout", "names", "evaluate", "realise", "layer", "archive", "upload", "sbom",
    "manifests", "signatures", "publish", "answer",
)  # fmt: skip


def with_answer(report: BuildReport, answered: float | None) -> BuildReport:
    """The report with its ``answer`` step: from the end of its publication (or of the
    build) to the moment a request that waited for it learnt of it."""
    if answered is None or answered < report.started:  # none, or an earlier build's
        return report
    done = max((s.ended for s in report.steps if s.step == "publish"), default=None)
    began = min(answered, done or report.finished or answered)
    return replace(report, steps=(*report.steps, StepTime("answer", began, answered)))


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
    flake: FlakeLock | None = None  # the package set was read as this flake
    left_out: tuple[str, ...] = ()  # packages every image holds that the flake lacks
    environments: tuple[Environment, ...] = ()
    plain: tuple[str, ...] = ()  # nested sets' packages in no environment (not modules)
    steps: tuple[StepTime, ...] = ()  # in the order they began; none in older reports
    # Packages every image holds that the name lists itself (``ImageRequest.asked``): part
    # of the key, so the page's name lists them too.
    asked: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes a client downloads for the whole image (its layers, compressed)."""
        return sum(layer.size for layer in self.layers)

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def encode(self) -> str:
        """The report as a store keeps it: one JSON document."""
        return json.dumps(self.to_json())

    @classmethod
    def decode(cls, text: str) -> BuildReport:
        return cls.from_json(json.loads(text))

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
            flake=FlakeLock.from_json(data["flake"]) if data.get("flake") else None,
            left_out=tuple(data.get("left_out", ())),
            environments=tuple(Environment.from_json(e) for e in data.get("environments", [])),
            plain=tuple(data.get("plain", [])),
            asked=tuple(data.get("asked", [])),
            steps=tuple(
                StepTime(x["step"], float(x["began"]), float(x["ended"]))
                for x in data.get("steps", [])
            ),
        )
