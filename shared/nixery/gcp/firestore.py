"""Registry state and build records in Firestore, shared by every instance.

One document per image key in ``builds`` holds the build's status (``building``, ``done``,
``failed``), the job, and a lease: the builder working on it (``lease_owner``) and when its
claim lapses (``lease_expires``). A record whose lease has lapsed may be taken over, by a
registry instance (which enqueues the build again) or by a builder (which runs it). All
takeovers happen in transactions; creation is a single create() that fails if the record
exists, so any number of concurrent requests on any number of instances start ONE build.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from google.api_core import exceptions
from google.cloud import firestore

from ..job import BuildJob
from ..manifests import LayerBlob, Manifest
from ..state import Failure, FailureKind, ImageStatus, Pending, Published
from .memory import BoundedCache

Claim = Literal["taken", "done", "busy"]
# Starts of one build whose builder stopped without an outcome, before it counts as failed.
MAX_ATTEMPTS = 3


def _failed(failure: Failure) -> dict[str, Any]:
    """The fields of a build record that say it failed, and why."""
    return {
        "status": "failed",
        "failure_kind": failure.kind.value,
        "failure_message": failure.message,
        "failure_detail": json.dumps(failure.detail),
        "lease_owner": None,
        "lease_expires": 0.0,
        "updated": failure.at,
    }


@dataclass
class _BuildRecord:
    """A document of ``builds``, as stored; absent fields take these defaults."""

    status: Literal["building", "done", "failed"]
    job: dict[str, Any] = field(default_factory=dict)
    lease_owner: str | None = None
    lease_expires: float = 0.0
    attempt: int = 0  # counts every start, so that each has a task name of its own
    round_start: int = 1  # the attempt that began this round (a fresh start after a failure)
    updated: float = 0.0
    manifests: dict[str, str] = field(default_factory=dict)  # when done
    failure_kind: str = ""  # when failed
    failure_message: str = ""
    failure_detail: str = "{}"  # JSON, so that Firestore need not index its fields

    @classmethod
    def read(cls, data: Mapping[str, Any] | None) -> _BuildRecord | None:
        if data is None:
            return None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def status_of(self) -> ImageStatus:
        if self.status == "done":
            return Published(self.manifests)
        if self.status == "failed":
            return Failure(
                FailureKind(self.failure_kind or FailureKind.BUILD_ERROR),
                self.failure_message,
                json.loads(self.failure_detail),
                self.updated,
            )
        return Pending(self.lease_expires)


class FirestoreState:
    def __init__(
        self,
        client: firestore.Client,
        prefix: str = "nixery_",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.builds = client.collection(prefix + "builds")
        self.manifests = client.collection(prefix + "manifests")
        self.layers = client.collection(prefix + "layers")
        self.clock = clock
        # A published image and a manifest never change: once read, they are kept.
        self._published: BoundedCache[Published] = BoundedCache()
        self._manifests: BoundedCache[Manifest] = BoundedCache()

    # --- State -------------------------------------------------------------------------

    def status(self, key: str) -> ImageStatus:
        if (published := self._published.get(key)) is not None:
            return published
        record = _BuildRecord.read(self.builds.document(key).get().to_dict())
        status = record.status_of() if record else None
        if isinstance(status, Published):
            self._published.keep(key, status)
        return status

    def manifest(self, digest: str) -> Manifest | None:
        if (manifest := self._manifests.get(digest)) is not None:
            return manifest
        doc = self.manifests.document(digest).get().to_dict()
        if not doc:
            return None
        return self._manifests.keep(digest, Manifest(doc["media_type"], doc["body"]))

    def publish(self, key: str, manifests: list[Manifest]) -> None:
        # The manifests are written before the record points at them; a batch is atomic.
        batch = self.client.batch()
        for m in manifests:
            batch.set(
                self.manifests.document(m.digest), {"media_type": m.media_type, "body": m.body}
            )
        done = {
            "status": "done",
            "manifests": {m.media_type: m.digest for m in manifests},
            "lease_owner": None,
            "lease_expires": 0.0,
            "updated": self.clock(),
        }
        batch.set(self.builds.document(key), done, merge=True)
        batch.commit()

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

    def layer(self, layer_key: str) -> LayerBlob | None:
        doc = self.layers.document(layer_key).get().to_dict()
        return LayerBlob(doc["digest"], doc["diff_id"], doc["size"]) if doc else None

    def record_layer(self, layer_key: str, layer: LayerBlob) -> None:
        self.layers.document(layer_key).set(asdict(layer))

    # --- Build records -----------------------------------------------------------------

    def start(self, job: BuildJob, pickup: float) -> int | None:
        """Records that the job must be built; the attempt this caller must enqueue, if any.

        A build that is running (a live lease) or finished is left alone; an absent record is
        created, a failed one is started afresh, and one whose lease lapsed (its builder died,
        or its task was lost) is taken over, up to ``MAX_ATTEMPTS`` times: a build whose
        builders keep dying (killed for memory, say) is then recorded as failed, not retried
        forever at a builder's cost each time.
        """
        ref = self.builds.document(job.key)
        now = self.clock()
        fresh = _BuildRecord(
            "building", job.to_dict(), lease_expires=now + pickup, attempt=1, updated=now
        )
        try:
            ref.create(asdict(fresh))
            return 1
        except exceptions.Conflict:
            pass

        @firestore.transactional
        def take_over(transaction: firestore.Transaction) -> int | None:
            record = _BuildRecord.read(ref.get(transaction=transaction).to_dict())
            if record and record.status == "done":
                return None
            fresh.attempt = (record.attempt if record else 0) + 1
            fresh.round_start = fresh.attempt
            if record and record.status == "building":
                if record.lease_expires > self.clock():
                    return None
                starts = record.attempt - record.round_start + 1
                if starts >= MAX_ATTEMPTS:
                    message = (
                        f"the build was started {starts} times and each time its builder "
                        "stopped before it finished (killed, e.g. for lack of memory)"
                    )
                    failed = Failure(FailureKind.BUILD_ERROR, message, {}, self.clock())
                    transaction.set(ref, _failed(failed), merge=True)
                    return None
                fresh.round_start = record.round_start
            transaction.set(ref, asdict(fresh), merge=True)
            return fresh.attempt

        attempt: int | None = take_over(self.client.transaction())
        return attempt

    def claim(self, job: BuildJob, owner: str, ttl: float) -> Claim:
        """A builder's claim on a job: run it ("taken"), or leave it to whoever has it."""
        ref = self.builds.document(job.key)

        @firestore.transactional
        def claim(transaction: firestore.Transaction) -> Claim:
            record = _BuildRecord.read(ref.get(transaction=transaction).to_dict())
            now = self.clock()
            if record and record.status in ("done", "failed"):
                return "done"
            if record and record.lease_owner not in (None, owner) and record.lease_expires > now:
                return "busy"
            lease = {
                "status": "building",
                "job": job.to_dict(),
                "lease_owner": owner,
                "lease_expires": now + ttl,
                "updated": now,
            }
            transaction.set(ref, lease, merge=True)
            return "taken"

        result: Claim = claim(self.client.transaction())
        return result

    def renew(self, key: str, owner: str, ttl: float) -> bool:
        """Extends the lease while the owner still holds it; False once it was lost."""
        ref = self.builds.document(key)

        @firestore.transactional
        def renew(transaction: firestore.Transaction) -> bool:
            record = _BuildRecord.read(ref.get(transaction=transaction).to_dict())
            if not record or record.status != "building" or record.lease_owner != owner:
                return False
            transaction.update(ref, {"lease_expires": self.clock() + ttl})
            return True

        return bool(renew(self.client.transaction()))

    def release(self, key: str, owner: str) -> None:
        """Gives the lease up after a transient failure, so a retry need not wait it out."""
        ref = self.builds.document(key)

        @firestore.transactional
        def release(transaction: firestore.Transaction) -> None:
            record = _BuildRecord.read(ref.get(transaction=transaction).to_dict())
            if record and record.status == "building" and record.lease_owner == owner:
                transaction.update(ref, {"lease_owner": None, "lease_expires": 0.0})

        release(self.client.transaction())
