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
from collections.abc import Callable
from typing import Any, Literal

from google.api_core import exceptions
from google.cloud import firestore

from ..archives import LayerBlob
from ..builder import BuildJob
from ..manifests import Manifest
from ..state import Failure
from .memory import keep

Claim = Literal["taken", "done", "busy"]


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
        self._images: dict[str, dict[str, str]] = {}
        self._manifests: dict[str, Manifest] = {}

    # --- State -------------------------------------------------------------------------

    def record(self, key: str) -> dict[str, Any] | None:
        return self.builds.document(key).get().to_dict()

    def image(self, key: str) -> dict[str, str] | None:
        if key in self._images:
            return self._images[key]
        record = self.record(key)
        if not record or record["status"] != "done":
            return None
        return keep(self._images, key, record["manifests"])

    def manifest(self, digest: str) -> Manifest | None:
        if digest in self._manifests:
            return self._manifests[digest]
        doc = self.manifests.document(digest).get().to_dict()
        if not doc:
            return None
        return keep(self._manifests, digest, Manifest(doc["media_type"], doc["body"]))

    def publish(self, key: str, manifests: list[Manifest]) -> None:
        # The manifests are written before the record points at them; a batch is atomic.
        batch = self.client.batch()
        for m in manifests:
            batch.set(
                self.manifests.document(m.digest), {"media_type": m.media_type, "body": m.body}
            )
        batch.set(
            self.builds.document(key),
            {
                "status": "done",
                "manifests": {m.media_type: m.digest for m in manifests},
                "lease_owner": None,
                "lease_expires": 0.0,
                "updated": self.clock(),
            },
            merge=True,
        )
        batch.commit()

    def failure(self, key: str) -> Failure | None:
        record = self.record(key)
        if not record or record["status"] != "failed":
            return None
        return Failure(
            record["failure_status"],
            record["failure_message"],
            json.loads(record["failure_detail"]),
            record["updated"],
        )

    def record_failure(self, key: str, failure: Failure) -> None:
        self.builds.document(key).set(
            {
                "status": "failed",
                "failure_status": failure.status,
                "failure_message": failure.message,
                "failure_detail": json.dumps(failure.detail),
                "lease_owner": None,
                "lease_expires": 0.0,
                "updated": failure.at,
            },
            merge=True,
        )

    def layer(self, layer_key: str) -> LayerBlob | None:
        doc = self.layers.document(layer_key).get().to_dict()
        return LayerBlob(doc["digest"], doc["diff_id"], doc["size"]) if doc else None

    def record_layer(self, layer_key: str, layer: LayerBlob) -> None:
        self.layers.document(layer_key).set(
            {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size}
        )

    # --- Build records -----------------------------------------------------------------

    def start(self, job: BuildJob, pickup: float) -> bool:
        """Records that the job must be built; True if this caller must enqueue it.

        A build that is running (a live lease) or finished is left alone; an absent record is
        created, and a failed one, or one whose lease lapsed, is taken over.
        """
        ref = self.builds.document(job.key)
        fresh = {
            "status": "building",
            "job": job.to_dict(),
            "lease_owner": None,
            "lease_expires": self.clock() + pickup,
            "attempt": 1,
            "updated": self.clock(),
        }
        try:
            ref.create(fresh)
            return True
        except exceptions.Conflict:
            pass

        @firestore.transactional
        def take_over(transaction: firestore.Transaction) -> bool:
            record = ref.get(transaction=transaction).to_dict() or {}
            if record.get("status") == "done":
                return False
            if record.get("status") == "building" and record["lease_expires"] > self.clock():
                return False
            attempt = record.get("attempt", 0) + 1
            transaction.set(ref, {**fresh, "attempt": attempt}, merge=True)
            return True

        return take_over(self.client.transaction())

    def claim(self, job: BuildJob, owner: str, ttl: float) -> Claim:
        """A builder's claim on a job: run it ("taken"), or leave it to whoever has it."""
        ref = self.builds.document(job.key)

        @firestore.transactional
        def claim(transaction: firestore.Transaction) -> Claim:
            record = ref.get(transaction=transaction).to_dict()
            now = self.clock()
            if record and record["status"] in ("done", "failed"):
                return "done"
            if (
                record
                and record.get("lease_owner") not in (None, owner)
                and (record["lease_expires"] > now)
            ):
                return "busy"
            transaction.set(
                ref,
                {
                    "status": "building",
                    "job": job.to_dict(),
                    "lease_owner": owner,
                    "lease_expires": now + ttl,
                    "updated": now,
                },
                merge=True,
            )
            return "taken"

        return claim(self.client.transaction())

    def renew(self, key: str, owner: str, ttl: float) -> bool:
        """Extends the lease while the owner still holds it; False once it was lost."""
        ref = self.builds.document(key)

        @firestore.transactional
        def renew(transaction: firestore.Transaction) -> bool:
            record = ref.get(transaction=transaction).to_dict() or {}
            if record.get("status") != "building" or record.get("lease_owner") != owner:
                return False
            transaction.update(ref, {"lease_expires": self.clock() + ttl})
            return True

        return renew(self.client.transaction())

    def release(self, key: str, owner: str) -> None:
        """Gives the lease up after a transient failure, so a retry need not wait it out."""
        ref = self.builds.document(key)

        @firestore.transactional
        def release(transaction: firestore.Transaction) -> None:
            record = ref.get(transaction=transaction).to_dict() or {}
            if record.get("status") == "building" and record.get("lease_owner") == owner:
                transaction.update(ref, {"lease_owner": None, "lease_expires": 0.0})

        release(self.client.transaction())
