"""In-memory fakes of the core's ports, for tests.

They stand in for the state ports, the blob store, the clock, the package source, the build
queue and the builder, so that the image service and the build queues can be tested without
Nix, HTTP or emulators. They are never a backend of the registry: nothing here persists, and
``MemoryState`` and ``MemoryBlobStore`` are held to the real adapters' contracts by
``tests/contract/test_state_stores.py`` and ``tests/contract/test_blob_stores.py``.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from nixery.blobs import Hasher
from nixery.errors import (
    BuildError,
    BuildFailed,
    BuildTimedOut,
    ImageTooLarge,
    Transient,
    UnknownBlob,
    UnknownPackages,
)
from nixery.job import BuildJob
from nixery.oci.manifests import LayerBlob, Manifest, canonical_json, image_manifests
from nixery.ports import StatePorts, never
from nixery.records import (
    MAX_RELEASES,
    BuildReport,
    Failure,
    FailureKind,
    ImageStatus,
    Pending,
    Published,
    Revision,
    bounded_names,
    given_up,
    with_answer,
)
from nixery.request import AMD64, ImageRequest

REVISION = Revision("test", "0" * 40)

# One error of each kind a failed build is remembered as.
BUILD_ERRORS: list[BuildError] = [
    UnknownPackages(["nosuch", "nothere"]),
    BuildFailed("builder for hello failed", "error: line 1\nline 2"),
    BuildTimedOut("a builder ran past 3 seconds", "still building"),
    ImageTooLarge(12_000_000_000, 10_000_000_000),
]


def sample_job(*packages: str) -> BuildJob:
    """A job for the given packages (``hello`` by default) at a fixed revision."""
    return BuildJob.of(ImageRequest(tuple(sorted(packages or ("hello",))), AMD64), REVISION)


def sample_config(seed: str = "image") -> bytes:
    """The config blob of ``sample_manifests(seed)``: its only blob."""
    return canonical_json({"seed": seed})


def sample_manifests(seed: str = "image") -> list[Manifest]:
    """One image in both manifest formats; another seed gives other bytes and digests."""
    return image_manifests(sample_config(seed), [])


def all_at_once(calls: Sequence[Callable[[], object]], timeout: float = 120) -> list[Exception]:
    """Runs the calls on threads released together, as racing requests or builders would;
    returns what they raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[Exception] = []

    def run(call: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=30)
            call()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"still running after {timeout} s"
    return errors


class FakeClock:
    """``time.time`` under the test's control; ``sleep`` passes fake time and returns at once.

    ``after(seconds, action)`` runs an action once fake time has passed that point, which is
    how a test scripts what the world does while the code under test sleeps.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []
        self._due: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [action for at, action in self._due if at <= self.now]
        self._due = [(at, action) for at, action in self._due if at > self.now]
        for action in due:
            action()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def nap(self, seconds: float) -> None:
        """Sleeps ``seconds``, or until the next scheduled action has run: how a wait that
        what the action does may end passes fake time."""
        upcoming = [at - self.now for at, _ in self._due]
        self.sleep(min([seconds, *upcoming]))

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        self._due.append((self.now + seconds, action))


class MemoryListener:
    """A listener ``MemoryState.listen`` opened. ``fail`` breaks it as a stream's terminal
    error breaks a Firestore listener (it hears nothing more and is no longer active);
    ``stall`` leaves it active but deaf, as a stream that hangs."""

    def __init__(self, changed: Callable[[ImageStatus], None]) -> None:
        self.changed = changed
        self.is_active = True
        self.deaf = False
        self.heard = 0  # statuses it passed on

    def hear(self, status: ImageStatus) -> None:
        if self.is_active and not self.deaf:
            self.heard += 1
            self.changed(status)

    def fail(self) -> None:
        self.is_active = False

    def stall(self) -> None:
        self.deaf = True

    def unsubscribe(self) -> None:
        self.is_active = False


class MemoryState:
    """Every state port in dicts, plus the build records (``start``, ``claim``, ``release``,
    ``listen``) that ``TaskBuildQueue`` and builders use, with ``FirestoreBuildRecords``' lease
    rules.

    ``reads`` counts ``status`` calls, ``attempts`` the builds started per key and
    ``listeners`` every listener opened per key. A listener hears each call that may change a
    record, at once, on the caller's thread.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.reads = 0
        self.attempts: Counter[str] = Counter()
        self.releases: Counter[str] = Counter()  # since the build started afresh
        self._images: dict[str, Published | Failure] = {}
        self._leases: dict[str, tuple[str | None, float]] = {}  # owner, expiry
        self._causes: dict[str, str] = {}  # by ``release``
        self._manifests: dict[str, Manifest] = {}
        self._layers: dict[str, LayerBlob] = {}
        self._reports: dict[str, BuildReport] = {}
        self._answers: dict[str, float] = {}
        self._package_names: dict[str, list[str]] = {}
        self.used: dict[str, float] = {}  # by ``touch``
        self.deletions = 0  # the generation
        self.listeners: dict[str, list[MemoryListener]] = {}
        self._lock = threading.Lock()

    def ports(self) -> StatePorts:
        return StatePorts(self, self, self, self)

    def status(self, key: str) -> ImageStatus:
        with self._lock:
            self.reads += 1
        return self._status(key)

    def _status(self, key: str) -> ImageStatus:
        with self._lock:
            if key in self._leases:
                owner, expires = self._leases[key]
                left = expires - self.clock()
                owned = owner is not None and left > 0
                return Pending(left, self._causes.get(key, ""), owned=owned)
            return self._images.get(key)

    def listen(self, key: str, changed: Callable[[ImageStatus], None]) -> MemoryListener:
        listener = MemoryListener(changed)
        with self._lock:
            self.listeners.setdefault(key, []).append(listener)
        listener.hear(self._status(key))
        return listener

    def _changed(self, key: str) -> None:
        with self._lock:
            listeners = list(self.listeners.get(key, []))
        status = self._status(key)
        for listener in listeners:
            listener.hear(status)

    def manifest(self, digest: str) -> Manifest | None:
        with self._lock:
            return self._manifests.get(digest)

    def publish(
        self, key: str, manifests: list[Manifest], referrers: Sequence[Manifest] = ()
    ) -> None:
        with self._lock:
            for m in [*manifests, *referrers]:
                self._manifests.setdefault(m.digest, m)
            self._images[key] = Published({m.media_type: m.digest for m in manifests})
            self._leases.pop(key, None)
        self._changed(key)

    def referrers(self, subject: str) -> list[Manifest]:
        with self._lock:
            return [m for m in self._manifests.values() if m.subject == subject]

    def touch(self, key: str, now: float) -> None:
        with self._lock:
            self.used[key] = now

    def forget(self, key: str) -> None:
        with self._lock:
            self.deletions += 1
            if not isinstance(self._images.get(key), Published):
                return
            del self._images[key]
        self._changed(key)

    def generation(self) -> int:
        return self.deletions

    def record_failure(self, key: str, failure: Failure) -> None:
        with self._lock:
            if isinstance(self._images.get(key), Published):
                return
            self._images[key] = failure
            self._leases.pop(key, None)
        self._changed(key)

    def layer(self, layer_key: str) -> LayerBlob | None:
        with self._lock:
            return self._layers.get(layer_key)

    def record_layer(self, layer_key: str, layer: LayerBlob) -> None:
        with self._lock:
            self._layers[layer_key] = layer

    def record_report(self, report: BuildReport) -> None:
        with self._lock:
            self._reports[report.key] = report

    def report(self, key: str) -> BuildReport | None:
        with self._lock:
            report = self._reports.get(key)
            return with_answer(report, self._answers.get(key)) if report else None

    def record_answer(self, key: str, at: float) -> None:
        with self._lock:
            report = self._reports.get(key)
            if key not in self._answers or (report and self._answers[key] < report.started):
                self._answers[key] = at

    def recent_reports(self, limit: int) -> list[BuildReport]:
        with self._lock:
            latest = sorted(self._reports.values(), key=lambda r: -r.started)[:limit]
            return [with_answer(r, self._answers.get(r.key)) for r in latest]

    def layer_users(self, digest: str, limit: int) -> int:
        with self._lock:
            users = [r for r in self._reports.values() if digest in {x.digest for x in r.layers}]
        return min(len(users), limit)

    def record_package_names(self, revision: str, names: Sequence[str]) -> None:
        with self._lock:
            self._package_names[revision] = bounded_names(names)

    def package_names(self, revision: str) -> list[str] | None:
        with self._lock:
            return self._package_names.get(revision)

    def start(self, job: BuildJob, pickup: float, max_building: int | None = None) -> int | None:
        with self._lock:
            if isinstance(self._images.get(job.key), Published):
                return None
            if self._leases.get(job.key, (None, 0.0))[1] > self.clock():
                return None
            if job.key in self._images:  # a failure: started afresh
                self.releases.pop(job.key, None)
            self._images.pop(job.key, None)
            self._causes.pop(job.key, None)
            self._leases[job.key] = (None, self.clock() + pickup)
            self.attempts[job.key] += 1
            attempt = self.attempts[job.key]
        self._changed(job.key)
        return attempt

    def claim(self, job: BuildJob, owner: str, ttl: float) -> Literal["taken", "done", "busy"]:
        with self._lock:
            if job.key in self._images:
                return "done"
            holder, expires = self._leases.get(job.key, (None, 0.0))
            if holder not in (None, owner) and expires > self.clock():
                return "busy"
            self._leases[job.key] = (owner, self.clock() + ttl)
            self._causes.pop(job.key, None)
        self._changed(job.key)
        return "taken"

    def release(self, key: str, owner: str, cause: str, hold: float) -> None:
        with self._lock:
            if self._leases.get(key, (None, 0.0))[0] != owner:
                return
            self.releases[key] += 1
            if self.releases[key] >= MAX_RELEASES:
                message = given_up(self.releases[key], cause)
                self._images[key] = Failure(FailureKind.BUILD_ERROR, message, {}, self.clock())
                self._leases.pop(key, None)
            else:
                self._leases[key] = (None, self.clock() + hold)
                self._causes[key] = cause
        self._changed(key)


class MemoryBlobWriter:
    def __init__(self, store: MemoryBlobStore) -> None:
        self._store = store
        self._buffer: bytearray | None = bytearray()
        self._hash = Hasher()
        store.staged[id(self)] = self._buffer

    def write(self, data: bytes | memoryview) -> int:
        assert self._buffer is not None, "write after commit or cancel"
        self._hash.update(data)
        self._buffer += data
        return len(data)

    def commit(self, digest: str) -> None:
        assert self._buffer is not None, "commit after commit or cancel"
        self._hash.check(digest)
        with self._store.lock:
            self._store.blobs.setdefault(digest, bytes(self._buffer))
        self.cancel()

    def cancel(self) -> None:
        self._buffer = None
        self._store.staged.pop(id(self), None)


class MemoryBlobStore:
    """The ``BlobStore`` protocol in a dict; ``staged`` holds the open writers' bytes."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.staged: dict[int, bytearray] = {}
        self.lock = threading.Lock()

    def writer(self) -> MemoryBlobWriter:
        return MemoryBlobWriter(self)

    def size(self, digest: str) -> int | None:
        blob = self.blobs.get(digest)
        return None if blob is None else len(blob)

    def intact(self, digest: str) -> bool:
        blob = self.blobs.get(digest)
        if blob is None:
            return False
        if "sha256:" + hashlib.sha256(blob).hexdigest() != digest:
            del self.blobs[digest]
            return False
        return True

    def url(self, digest: str) -> str | None:
        return None

    def open(self, digest: str) -> BinaryIO:
        if (blob := self.blobs.get(digest)) is None:
            raise UnknownBlob("blob unknown", {"digest": digest})
        return io.BytesIO(blob)


class StaticSource:
    """A package source with fixed tags; ``resolved`` lists the tags looked up."""

    def __init__(self, tags: Mapping[str, Revision]) -> None:
        self.revisions = dict(tags)
        self.resolved: list[str] = []

    def resolve(self, tag: str) -> Revision | None:
        self.resolved.append(tag)
        return self.revisions.get(tag)

    def checkout(self, revision: Revision) -> Path:
        raise AssertionError("a unit test checked a source out")

    def tags(self) -> list[str]:
        return sorted(self.revisions)

    def flake_origin(self, revision: Revision) -> None:
        """Never a flake: nothing is checked out."""
        return None


Outcome = Published | Failure | None | Exception


class ScriptedQueue:
    """A ``BuildQueue`` answering each ``build`` with the next scripted outcome (an exception
    is raised); ``calls`` lists the jobs and waits it was given."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[BuildJob, float]] = []
        self.under_way: set[str] = set()  # keys ``running`` says are being built

    def running(self, key: str) -> bool:
        return key in self.under_way

    def build(
        self, job: BuildJob, wait: float, gone: Callable[[], bool] = never
    ) -> Published | Failure | None:
        self.calls.append((job, wait))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeBuilder:
    """Stands in for ``Builder.run``: records the job, waits for ``release`` and ``seconds``,
    then publishes the manifests, records the failure or raises the transient error given."""

    def __init__(
        self,
        state: MemoryState,
        outcome: list[Manifest] | Failure | Transient,
        seconds: float = 0.1,
    ) -> None:
        self.state = state
        self.outcome = outcome
        self.seconds = seconds
        self.calls: list[BuildJob] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def run(self, job: BuildJob, enqueued: float | None = None) -> None:
        with self._lock:
            self.calls.append(job)
        self.started.set()
        assert self.release.wait(timeout=30), "the test never released the build"
        time.sleep(self.seconds)
        if isinstance(self.outcome, Transient):
            raise self.outcome
        if isinstance(self.outcome, Failure):
            self.state.record_failure(job.key, self.outcome)
        else:
            self.state.publish(job.key, self.outcome)
