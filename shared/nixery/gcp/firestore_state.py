"""Registry state and build records in Firestore, shared by every instance.

One document per image key in ``builds`` holds the build's status (``building``, ``done``,
``failed``), the job, and a lease: the builder working on it (``lease_owner``, none while
the task waits for a builder) and when its claim lapses (``lease_expires``). A record whose
lease has lapsed may be taken over, by a registry instance (which enqueues the build again)
or by a builder (which runs it). Creation is a create() that fails if the record exists and
every takeover a transaction, so any number of concurrent requests on any number of
instances start ONE build.

Records end by themselves: ``expires`` is the field of the deployment's Firestore TTL policy. A
failure is kept a day (for its page and log; it is retried after ``NIXERY_FAILURE_TTL``
anyway), an image half a year after its last pull by tag (``nixery gc`` usually goes first);
a build under way has none, so it is never deleted under its builder.

Leases run on the database's clock, not on each machine's: a lease is set and judged from
the time at which Firestore read the record (``read_time``), so an instance whose clock is
off can neither steal a live lease nor keep a dead one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from google.api_core import exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from nixery.caches import BoundedCache, period
from nixery.errors import BuildQueueFull, DatabaseUnavailable
from nixery.gcp.deadline import BACKEND_TIMEOUT, Deadline, bounded
from nixery.job import BuildJob
from nixery.oci.manifests import LayerBlob, Manifest
from nixery.ports import Listening, StatePorts
from nixery.records import (
    MAX_RELEASES,
    BuildReport,
    Failure,
    FailureKind,
    ImageRecord,
    ImageStatus,
    Pending,
    Published,
    decode_names,
    encode_names,
    given_up,
    with_answer,
)

Claim = Literal["taken", "done", "busy"]
# Builders that may stop holding a build's lease (killed, e.g. for memory) before the build
# counts as failed. A task that waits long for a builder is enqueued again, but not counted.
MAX_ATTEMPTS = 3
# Seconds an instance trusts its memory that an image is published.
PUBLISHED_TTL = 600.0
# Seconds after which the TTL policy may delete a record (see the module's docstring).
FAILURE_KEEP = 86400.0
IMAGE_KEEP = 180 * 86400.0


def _expires(at: float, keep: float) -> datetime:
    return datetime.fromtimestamp(at + keep, UTC)


def _lease(owner: str | None, now: datetime, ttl: float) -> dict[str, Any]:
    """The fields of a lease that lasts ``ttl`` seconds from ``now``, the database's time."""
    return {"lease_owner": owner, "lease_expires": now + timedelta(seconds=ttl)}


_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires": None}


def _doc_id(revision: str) -> str:
    """A document id for a revision, whose source URL holds slashes that ids may not."""
    return hashlib.sha256(revision.encode()).hexdigest()


def _failed(failure: Failure) -> dict[str, Any]:
    """The fields of a build record that say it failed, and why."""
    kind, message, detail, at = failure.encode()
    return {
        "status": "failed",
        "failure_kind": kind,
        "failure_message": message,
        "failure_detail": detail,
        **_NO_LEASE,
        "updated": at,
        "expires": _expires(failure.at, FAILURE_KEEP),
    }


def _report(doc: Mapping[str, Any]) -> BuildReport:
    return with_answer(BuildReport.decode(doc["report"]), doc.get("answered"))


def _manifest_of(doc: Mapping[str, Any]) -> Manifest:
    return Manifest(doc["media_type"], doc["body"])


@dataclass
class _BuildRecord:
    """A document of ``builds``, as stored; absent fields take these defaults."""

    status: Literal["building", "done", "failed"]
    job: dict[str, Any] = field(default_factory=dict)
    lease_owner: str | None = None
    lease_expires: datetime | None = None  # by the database's clock
    attempt: int = 0  # counts every start, so that each has a task name of its own
    deaths: int = 0  # builders that lost their lease since the build last started afresh
    releases: int = 0  # attempts given back (``release``) since it last started afresh
    cause: str = ""  # why an attempt was given back to the queue (``release``)
    updated: float = 0.0
    used: float = 0.0  # the last pull by tag (`nixery gc`), recorded now and then
    manifests: dict[str, str] = field(default_factory=dict)  # when done
    referrers: list[str] = field(default_factory=list)  # digests of its artifacts, when done
    failure_kind: str = ""  # when failed
    failure_message: str = ""
    failure_detail: str = "{}"  # JSON, so that Firestore need not index its fields
    expires: datetime | None = None  # the TTL policy's field; none while building

    @classmethod
    def read(cls, data: Mapping[str, Any] | None) -> _BuildRecord | None:
        if data is None:
            return None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def lease_left(self, now: datetime) -> float:
        """Seconds the lease has left at ``now`` (the database's time); negative once lapsed."""
        if self.lease_expires is None:
            return -math.inf
        return (self.lease_expires - now).total_seconds()

    def status_of(self, now: datetime) -> ImageStatus:
        if self.status == "done":
            return Published(self.manifests)
        if self.status == "failed":
            return Failure.decode(
                self.failure_kind, self.failure_message, self.failure_detail, self.updated
            )
        left = self.lease_left(now)
        return Pending(left, self.cause, owned=self.lease_owner is not None and left > 0)


class FirestoreDatabase:
    """The collections every part below shares, and what they keep in memory."""

    def __init__(
        self,
        client: firestore.Client,
        prefix: str = "nixery_",
        clock: Callable[[], float] = time.time,
        skew: Callable[[], float] = lambda: 0.0,
        timeout: float = BACKEND_TIMEOUT,
    ) -> None:
        """``clock`` dates publications and failures; leases use the database's clock, plus
        ``skew`` seconds (how tests let time pass). Each call gives up after ``timeout``
        seconds with ``DatabaseUnavailable``."""
        self.client = client
        self.deadline = Deadline("Firestore", DatabaseUnavailable, timeout)
        self.builds = client.collection(prefix + "builds")
        self.manifests = client.collection(prefix + "manifests")
        self.layers = client.collection(prefix + "layers")
        self.reports = client.collection(prefix + "reports")
        self.package_sets = client.collection(prefix + "package_sets")
        self.clock = clock
        self.skew = skew
        # A manifest never changes: once read, it is kept. A published image is kept within
        # a generation's period only, so that one collected or forgotten elsewhere is seen to
        # be, and an answer from memory is never older than a period (docs/security.md).
        self.published: BoundedCache[Published] = BoundedCache(clock=clock, every=PUBLISHED_TTL)
        self.manifest_cache: BoundedCache[Manifest] = BoundedCache()
        # Every pull by tag asks for them; they change only when an image is built again.
        self.referrer_cache: BoundedCache[list[Manifest]] = BoundedCache(
            clock=clock, every=PUBLISHED_TTL
        )
        self.forgotten = 0  # images this instance forgot; moves ``generation``
        self.forgetting = threading.Lock()
        # Held while a new build is counted against NIXERY_MAX_QUEUED_BUILDS and recorded.
        self.admitting = threading.Lock()

    def ports(self) -> StatePorts:
        """The state ports, each a view of this database."""
        return StatePorts(
            FirestorePublishedImages(self),
            FirestoreLayerCache(self),
            FirestoreBuildReports(self),
            FirestorePackageNames(self),
        )


class _Part:
    """One port's view of the database; ``bounded`` calls give up by its deadline."""

    def __init__(self, db: FirestoreDatabase) -> None:
        self._db = db
        self.client, self.deadline, self.clock, self.skew = (
            db.client,
            db.deadline,
            db.clock,
            db.skew,
        )
        self.builds, self.manifests, self.layers = db.builds, db.manifests, db.layers
        self.reports, self.package_sets = db.reports, db.package_sets
        self._published, self._manifests = db.published, db.manifest_cache
        self._referrers = db.referrer_cache
        self._admitting = db.admitting

    def _manifest(self, digest: str) -> Manifest | None:
        """A manifest never changes: once read, it is kept."""
        return self._manifests.fetch(digest, lambda: self._read_manifest(digest))

    @bounded
    def _read_manifest(self, digest: str) -> Manifest | None:
        doc = self.manifests.document(digest).get().to_dict()
        return _manifest_of(doc) if doc else None

    def _now(self, snapshot: firestore.DocumentSnapshot[Any]) -> datetime:
        """The database's time when it read the snapshot."""
        read_time: datetime = snapshot.read_time
        return read_time + timedelta(seconds=self.skew())


class FirestorePublishedImages(_Part):
    def status(self, key: str) -> ImageStatus:
        if (published := self._published.get(key)) is not None:
            return published
        return self._read_status(key)

    @bounded
    def _read_status(self, key: str) -> ImageStatus:
        snapshot = self.builds.document(key).get()
        record = _BuildRecord.read(snapshot.to_dict())
        status = record.status_of(self._now(snapshot)) if record else None
        if isinstance(status, Published):
            self._published.keep(key, status)
        return status

    def manifest(self, digest: str) -> Manifest | None:
        return self._manifest(digest)

    @bounded
    def publish(
        self, key: str, manifests: list[Manifest], referrers: Sequence[Manifest] = ()
    ) -> None:
        # The manifests are written before the record points at them; a batch is atomic.
        batch = self.client.batch()
        for m in manifests:
            batch.set(
                self.manifests.document(m.digest), {"media_type": m.media_type, "body": m.body}
            )
        for m in referrers:  # found by their subject (``referrers``)
            doc = {"media_type": m.media_type, "body": m.body, "subject": m.subject}
            batch.set(self.manifests.document(m.digest), doc)
        now = self.clock()
        done = {
            "status": "done",
            "manifests": {m.media_type: m.digest for m in manifests},
            "referrers": sorted(m.digest for m in referrers),
            **_NO_LEASE,
            "updated": now,
            "used": now,
            "expires": _expires(now, IMAGE_KEEP),
        }
        batch.set(self.builds.document(key), done, merge=True)
        batch.commit()

    def referrers(self, subject: str) -> list[Manifest]:
        # None yet may mean not published yet: only an answer with referrers is kept.
        return self._referrers.fetch(subject, lambda: self._read_referrers(subject) or None) or []

    @bounded
    def _read_referrers(self, subject: str) -> list[Manifest]:
        found = self.manifests.where(filter=FieldFilter("subject", "==", subject)).stream()
        return [Manifest(d["media_type"], d["body"]) for s in found if (d := s.to_dict())]

    @bounded
    def touch(self, key: str, now: float) -> None:
        with contextlib.suppress(exceptions.NotFound):  # forgotten or collected meanwhile
            self.builds.document(key).update({"used": now, "expires": _expires(now, IMAGE_KEEP)})

    @bounded
    def forget(self, key: str) -> None:
        """Deletes the build record only if it still says published, so that a build that
        started meanwhile is left alone."""
        self._published.drop(key)
        with self._db.forgetting:
            self._db.forgotten += 1
        ref = self.builds.document(key)

        @firestore.transactional
        def forget(transaction: firestore.Transaction) -> None:
            record = _BuildRecord.read(ref.get(transaction=transaction).to_dict())
            if record and record.status == "done":
                transaction.delete(ref)

        forget(self.client.transaction())

    @bounded
    def record_failure(self, key: str, failure: Failure) -> None:
        """Records a failure, unless the image was published meanwhile (by a builder that
        took over a lapsed lease): a late failure never takes a published image back."""
        ref = self.builds.document(key)

        @firestore.transactional
        def record(transaction: firestore.Transaction) -> None:
            record = _BuildRecord.read(ref.get(transaction=transaction).to_dict())
            if not record or record.status != "done":
                transaction.set(ref, _failed(failure), merge=True)

        record(self.client.transaction())

    def generation(self) -> int:
        """Nothing tells an instance what another one (or `nixery gc`) deleted: what it found
        out is checked again every PUBLISHED_TTL, when the published images and referrers it
        keeps go too (the period's boundaries differ per instance: ``caches.period``). What
        this instance forgets moves it at once."""
        return (period(PUBLISHED_TTL, self.clock) << 32) + self._db.forgotten


class FirestoreLayerCache(_Part):
    @bounded
    def layer(self, layer_key: str) -> LayerBlob | None:
        doc = self.layers.document(layer_key).get().to_dict()
        return LayerBlob(doc["digest"], doc["diff_id"], doc["size"]) if doc else None

    @bounded
    def record_layer(self, layer_key: str, layer: LayerBlob) -> None:
        self.layers.document(layer_key).set(asdict(layer))


class FirestoreBuildReports(_Part):
    @bounded
    def record_report(self, report: BuildReport) -> None:
        # The layers' digests are a field of their own, for layer_users' query; the status,
        # for the collector's. Merged, so that a request's answer (``answered``) written
        # meanwhile stays.
        self.reports.document(report.key).set({
            "started": report.started,
            "status": report.status,
            "layers": [layer.digest for layer in report.layers],
            "report": report.encode(),
        }, merge=True)  # fmt: skip

    @bounded
    def report(self, key: str) -> BuildReport | None:
        doc = self.reports.document(key).get().to_dict()
        return _report(doc) if doc and "report" in doc else None

    @bounded
    def record_answer(self, key: str, at: float) -> None:
        """The first answer of the report's build, as SQLite keeps it: an earlier build's is
        replaced, a later one of this build's is not (one read and one write per instance
        that answered the build, which notes it once)."""
        ref = self.reports.document(key)

        @firestore.transactional
        def record(transaction: firestore.Transaction) -> None:
            doc = ref.get(transaction=transaction).to_dict() or {}
            answered, started = doc.get("answered"), doc.get("started", 0.0)
            if answered is None or answered < started:
                transaction.set(ref, {"answered": at}, merge=True)

        record(self.client.transaction())

    @bounded
    def recent_reports(self, limit: int) -> list[BuildReport]:
        query = self.reports.order_by("started", direction=firestore.Query.DESCENDING)
        return [_report(doc.to_dict() or {}) for doc in query.limit(limit).stream()]

    @bounded
    def layer_users(self, digest: str, limit: int) -> int:
        query = self.reports.where(filter=FieldFilter("layers", "array_contains", digest))
        return len(list(query.limit(limit).stream()))


class FirestorePackageNames(_Part):
    @bounded
    def record_package_names(self, revision: str, names: Sequence[str]) -> None:
        self.package_sets.document(_doc_id(revision)).set(
            {
                "revision": revision,
                "names": encode_names(names),
                "recorded": self.clock(),
            }
        )

    @bounded
    def package_names(self, revision: str) -> list[str] | None:
        doc = self.package_sets.document(_doc_id(revision)).get().to_dict()
        if not doc:
            return None
        return decode_names(doc["names"])


class FirestoreBuildRecords(_Part):
    """Who enqueues a build (the registry, ``start``) and who runs it (a builder's lease)."""

    @bounded
    def start(self, job: BuildJob, pickup: float, max_building: int | None = None) -> int | None:
        """Records that the job must be built; the attempt this caller must enqueue, if any.

        A build that is running (a live lease) or finished is left alone; an absent record is
        created, a failed one is started afresh, and one whose lease lapsed is taken over:
        ``pickup`` seconds after it was enqueued if no builder took it, or when its builder
        died. After ``MAX_ATTEMPTS`` deaths (builders killed for memory, say) the build is
        recorded as failed, not retried forever at a builder's cost each time. A new build
        is refused (``BuildQueueFull``) while ``max_building`` builds are under way.
        """
        ref = self.builds.document(job.key)

        def fresh(now: datetime, attempt: int) -> dict[str, Any]:
            record = _BuildRecord("building", job.to_dict(), attempt=attempt, updated=self.clock())
            return {**asdict(record), **_lease(None, now, pickup)}

        # Outside a transaction first: concurrent requests for one new image then contend
        # only for the create, not for locks on the record (which make transactions fail).
        snapshot = ref.get()
        record = _BuildRecord.read(snapshot.to_dict())
        limited = max_building is not None and (record is None or record.status == "failed")
        if not limited:
            return self._record_start(ref, snapshot, record, fresh)
        # This instance's new builds are counted and recorded one at a time, so that a burst
        # of them on one instance stays within the limit (instances may still overlap).
        with self._admitting:
            # The library's annotations of aggregation queries are wrong; it is a list of
            # lists of results.
            building: Any = self.builds.where(filter=FieldFilter("status", "==", "building"))
            under_way = int(building.count().get()[0][0].value)
            if max_building is not None and under_way >= max_building:
                raise BuildQueueFull(
                    f"{under_way} builds are under way, as many as this registry allows; "
                    "retry later"
                )
            return self._record_start(ref, snapshot, record, fresh)

    def _record_start(
        self,
        ref: firestore.DocumentReference,
        snapshot: firestore.DocumentSnapshot[Any],
        record: _BuildRecord | None,
        fresh: Callable[[datetime, int], dict[str, Any]],
    ) -> int | None:
        """Creates the record, or takes a failed or lapsed one over: start's second half."""
        if record is None:
            try:
                ref.create(fresh(self._now(snapshot), 1))
                return 1
            except exceptions.Conflict:
                pass  # another request created it meanwhile
        elif record.status == "done" or record.lease_left(self._now(snapshot)) > 0:
            return None

        @firestore.transactional
        def take_over(transaction: firestore.Transaction) -> int | None:
            snapshot = ref.get(transaction=transaction)
            now = self._now(snapshot)
            record = _BuildRecord.read(snapshot.to_dict())
            if record and record.status == "done":
                return None
            started = fresh(now, (record.attempt if record else 0) + 1)
            if record and record.status == "building":
                if record.lease_left(now) > 0:
                    return None
                # A lapsed lease with an owner is a builder that died; without one, a task
                # that waited for a builder (the queue was busy) or was given back.
                started["deaths"] = record.deaths + (record.lease_owner is not None)
                started["releases"] = record.releases
                if started["deaths"] >= MAX_ATTEMPTS:
                    message = (
                        f"the build's builder stopped {started['deaths']} times before it "
                        "finished (killed, e.g. for lack of memory)"
                    )
                    failed = Failure(FailureKind.BUILD_ERROR, message, {}, self.clock())
                    transaction.set(ref, _failed(failed), merge=True)
                    return None
            transaction.set(ref, started, merge=True)
            attempt: int = started["attempt"]
            return attempt

        attempt: int | None = take_over(self.client.transaction())
        return attempt

    def listen(self, key: str, changed: Callable[[ImageStatus], None]) -> Listening:
        """A Firestore listener on the record: one read for its first snapshot (none while
        the record does not exist), then one per change. A published status is remembered,
        as a read's is."""

        def snapshot(docs: list[firestore.DocumentSnapshot[Any]], *_: object) -> None:
            status: ImageStatus = None
            if docs and (record := _BuildRecord.read(docs[0].to_dict())):
                status = record.status_of(self._now(docs[0]))
            if isinstance(status, Published):
                self._published.keep(key, status)
            changed(status)

        listening: Listening = self.builds.document(key).on_snapshot(snapshot)
        return listening

    @bounded
    def claim(self, job: BuildJob, owner: str, ttl: float) -> Claim:
        """A builder's claim on a job: run it ("taken"), or leave it to whoever has it. A
        taken claim clears a released attempt's cause: the requests wait for this attempt."""
        ref = self.builds.document(job.key)

        @firestore.transactional
        def claim(transaction: firestore.Transaction) -> Claim:
            snapshot = ref.get(transaction=transaction)
            record = _BuildRecord.read(snapshot.to_dict())
            if record and record.status in ("done", "failed"):
                return "done"
            now = self._now(snapshot)
            live = record and record.lease_left(now) > 0
            if record and record.lease_owner not in (None, owner) and live:
                return "busy"
            lease = {
                "status": "building",
                "job": job.to_dict(),
                "cause": "",
                **_lease(owner, now, ttl),
            }
            transaction.set(ref, {**lease, "updated": self.clock()}, merge=True)
            return "taken"

        result: Claim = claim(self.client.transaction())
        return result

    @bounded
    def renew(self, key: str, owner: str, ttl: float) -> bool:
        """Extends the lease while the owner still holds it; False once it was lost."""
        ref = self.builds.document(key)

        @firestore.transactional
        def renew(transaction: firestore.Transaction) -> bool:
            snapshot = ref.get(transaction=transaction)
            record = _BuildRecord.read(snapshot.to_dict())
            if not record or record.status != "building" or record.lease_owner != owner:
                return False
            transaction.update(ref, _lease(owner, self._now(snapshot), ttl))
            return True

        return bool(renew(self.client.transaction()))

    @bounded
    def release(self, key: str, owner: str, cause: str, hold: float) -> None:
        """Gives the build back to the queue after a transient failure, saying why: until a
        builder claims the retry (which clears it) or the build is published or started
        afresh, the requests for it answer 503 with the ``cause`` at once. For ``hold``
        seconds no request enqueues the build again, since the queue retries the task
        itself; any builder may claim it meanwhile, and once ``hold`` passed unclaimed a
        request enqueues it again (as a task that waited for a builder, no builder's
        death). The ``MAX_RELEASES``th release since the build started afresh records a
        failure instead (a fault that lasts, retried by a pull after NIXERY_FAILURE_TTL)."""
        ref = self.builds.document(key)

        @firestore.transactional
        def release(transaction: firestore.Transaction) -> None:
            snapshot = ref.get(transaction=transaction)
            record = _BuildRecord.read(snapshot.to_dict())
            if not record or record.status != "building" or record.lease_owner != owner:
                return
            releases = record.releases + 1
            if releases >= MAX_RELEASES:
                failed = Failure(
                    FailureKind.BUILD_ERROR, given_up(releases, cause), {}, self.clock()
                )
                transaction.set(ref, _failed(failed), merge=True)
                return
            lease = _lease(None, self._now(snapshot), hold)
            transaction.update(ref, {**lease, "cause": cause, "releases": releases})

        release(self.client.transaction())


class FirestoreInventory(_Part):
    """What `nixery gc` lists and deletes."""

    def manifest(self, digest: str) -> Manifest | None:
        return self._manifest(digest)

    def images(self) -> Iterable[ImageRecord]:
        done = self.builds.where(filter=FieldFilter("status", "==", "done"))
        for snapshot in done.stream():
            record = _BuildRecord.read(snapshot.to_dict())
            if record is not None:
                used = max(record.used, record.updated)
                digests = (*record.manifests.values(), *record.referrers)
                yield ImageRecord(snapshot.id, digests, used)

    def manifest_digests(self) -> Iterable[str]:
        return (doc.id for doc in self.manifests.select([]).stream())

    def layer_rows(self) -> Iterable[tuple[str, str]]:
        for doc in self.layers.select(["digest"]).stream():
            yield doc.id, str((doc.to_dict() or {}).get("digest", ""))

    def failures(self) -> Iterable[tuple[str, float]]:
        failed = self.builds.where(filter=FieldFilter("status", "==", "failed"))
        for doc in failed.select(["updated"]).stream():
            yield doc.id, float((doc.to_dict() or {}).get("updated", 0.0))

    def name_lists(self) -> Iterable[str]:
        docs = [
            d.to_dict() or {} for d in self.package_sets.select(["revision", "recorded"]).stream()
        ]
        docs.sort(key=lambda d: float(d.get("recorded", 0.0)), reverse=True)
        return [str(d["revision"]) for d in docs if "revision" in d]

    def unfinished_reports(self) -> Iterable[tuple[str, float]]:
        unfinished = self.reports.where(
            filter=FieldFilter("status", "in", ["building", "interrupted"])
        )
        for doc in unfinished.select(["started"]).stream():
            yield doc.id, float((doc.to_dict() or {}).get("started", 0.0))

    def delete(
        self,
        *,
        images: Iterable[str] = (),
        manifests: Iterable[str] = (),
        layers: Iterable[str] = (),
        failures: Iterable[str] = (),
        name_lists: Iterable[str] = (),
        reports: Iterable[str] = (),
    ) -> None:
        images = list(images)
        refs = [
            *(self.package_sets.document(_doc_id(r)) for r in name_lists),
            *(self.builds.document(k) for k in (*images, *failures)),
            # Their pages go too.
            *(self.reports.document(k) for k in (*images, *failures, *reports)),
            *(self.manifests.document(d) for d in manifests),
            *(self.layers.document(k) for k in layers),
        ]
        for start in range(0, len(refs), 500):  # a batch takes at most 500 writes
            batch = self.client.batch()
            for ref in refs[start : start + 500]:
                batch.delete(ref)
            batch.commit()
        for key in images:
            self._published.drop(key)
