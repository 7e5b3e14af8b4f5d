"""The state ports' contract: one suite, run against every adapter (as distribution runs one storage
driver suite against every driver), so that local mode, Google Cloud mode and the unit
tests' fake all answer alike. Firestore runs against its emulator, hence the e2e mark.

Firestore's build records (leases) are Google Cloud mode's alone; their tests follow the
suite, with a fake clock.
"""

from __future__ import annotations

import errno
import json
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from nixery.errors import (
    DISK_FULL,
    BuildError,
    BuildFailed,
    BuildTimedOut,
    DatabaseUnavailable,
    StorageUnavailable,
    UnknownPackages,
)
from nixery.gcp.firestore_state import MAX_ATTEMPTS, PUBLISHED_TTL
from nixery.oci.manifests import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    LayerBlob,
    Manifest,
    artifact_manifest,
)
from nixery.pipeline.progress import Reporter
from nixery.records import (
    MAX_LOG,
    MAX_MESSAGE,
    MAX_PACKAGE_NAMES,
    MAX_RELEASES,
    BuildReport,
    Environment,
    Failure,
    FailureKind,
    FailureReport,
    ImageStatus,
    LayerReport,
    Pending,
    Published,
    StepTime,
    given_up,
)
from nixery.service.catalog import SILENT, Catalog
from nixery.service.gc import collect
from tests.helpers.disk_faults import fail_reads_and_writes, fill, locked, read_only, small_disk
from tests.helpers.fakes import (
    BUILD_ERRORS,
    FakeClock,
    MemoryState,
    StaticSource,
    all_at_once,
    sample_job,
    sample_manifests,
)
from tests.helpers.stores import AllPorts, firestore_ports, sqlite_ports

StateUnderTest = AllPorts | MemoryState
KEY = sample_job().key
AT = 1_700_000_123.25  # not a whole number, to see that fractions survive


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.e2e), "memory"])
def state(request: pytest.FixtureRequest, tmp_path) -> StateUnderTest:
    if request.param == "sqlite":
        return sqlite_ports(tmp_path / "state.db")
    if request.param == "firestore":
        client = request.getfixturevalue("firestore_client")
        return firestore_ports(client, prefix=f"t{uuid.uuid4().hex}_")
    return MemoryState()


def test_an_unknown_key_digest_and_layer_are_none(state: StateUnderTest) -> None:
    assert state.status(KEY) is None
    assert state.manifest(sample_manifests()[0].digest) is None
    assert state.layer("no-such-layer") is None


def test_publish_makes_the_image_published_with_its_manifests_by_type(
    state: StateUnderTest,
) -> None:
    manifests = sample_manifests()
    state.publish(KEY, manifests)
    assert state.status(KEY) == Published({m.media_type: m.digest for m in manifests})
    assert set(state.status(KEY).manifests) == {OCI_MANIFEST, DOCKER_MANIFEST}
    for m in manifests:
        found = state.manifest(m.digest)
        assert found is not None
        assert (found.media_type, found.body) == (m.media_type, m.body)
        assert isinstance(found.body, bytes)


def test_publish_touches_no_other_key(state: StateUnderTest) -> None:
    state.publish(KEY, sample_manifests())
    assert state.status(sample_job("other").key) is None


@pytest.mark.parametrize("error", BUILD_ERRORS, ids=lambda e: type(e).__name__)
def test_a_failure_round_trips_with_its_kind_message_detail_and_time(
    state: StateUnderTest, error: BuildError
) -> None:
    failure = Failure.of(error, AT)
    state.record_failure(KEY, failure)
    found = state.status(KEY)
    assert found == failure
    assert isinstance(found, Failure)
    assert isinstance(found.kind, FailureKind)
    assert found.at == AT
    again = found.error()
    assert type(again) is type(error)
    assert (again.message, again.detail) == (error.message, error.detail)


def test_every_failure_kind_is_covered() -> None:
    assert {Failure.of(e, AT).kind for e in BUILD_ERRORS} == set(FailureKind)


def test_a_later_failure_replaces_an_earlier_one(state: StateUnderTest) -> None:
    state.record_failure(KEY, Failure.of(BuildFailed("first"), AT))
    later = Failure.of(UnknownPackages(["gone"]), AT + 60)
    state.record_failure(KEY, later)
    assert state.status(KEY) == later


def test_publish_clears_a_failure(state: StateUnderTest) -> None:
    state.record_failure(KEY, Failure.of(BuildTimedOut("slow"), AT))
    manifests = sample_manifests()
    state.publish(KEY, manifests)
    assert state.status(KEY) == Published({m.media_type: m.digest for m in manifests})


def test_a_failure_recorded_after_publish_leaves_the_image_published(state: StateUnderTest) -> None:
    """A second builder of the key (one that took a lapsed lease over) may fail after the
    first published: the image is out, and its manifests are served by digest already."""
    manifests = sample_manifests()
    state.publish(KEY, manifests)
    state.record_failure(KEY, Failure.of(BuildTimedOut("the slower twin timed out"), AT))
    assert state.status(KEY) == Published({m.media_type: m.digest for m in manifests})


def test_forget_makes_a_published_image_unknown_and_keeps_its_manifests(
    state: StateUnderTest,
) -> None:
    manifests = sample_manifests()
    state.publish(KEY, manifests)
    state.forget(KEY)
    assert state.status(KEY) is None
    assert state.manifest(manifests[0].digest) == manifests[0]
    state.publish(KEY, manifests)
    assert isinstance(state.status(KEY), Published)


def test_forget_leaves_a_failure_alone(state: StateUnderTest) -> None:
    failure = Failure.of(BuildFailed("broken", "log"), 1000.0)
    state.record_failure(KEY, failure)
    state.forget(KEY)
    assert state.status(KEY) == failure


def test_the_generation_holds_until_an_image_is_forgotten(state: StateUnderTest) -> None:
    """What a registry found out about its images holds while the generation stays: a
    publication, a pull's record, a report leave it; an image this process forgot moves it
    at once (a rebuild of an image found broken), whatever the adapter."""
    first = state.generation()
    state.publish(KEY, sample_manifests())
    state.touch(KEY, AT)
    state.record_report(sample_report())
    assert state.generation() == first
    state.forget(KEY)
    assert state.generation() != first


@pytest.mark.e2e
def test_a_firestore_instance_sees_another_ones_deletions_within_a_period(
    firestore_client,
) -> None:
    """Nothing tells an instance what gc or another instance deleted: its generation moves
    within PUBLISHED_TTL, and what it kept of the published images goes with it."""
    clock = FakeClock(AT)
    prefix = f"t{uuid.uuid4().hex}_"
    served = firestore_ports(firestore_client, prefix, clock=clock)
    collector = firestore_ports(firestore_client, prefix, clock=clock)
    served.publish(KEY, sample_manifests())
    assert isinstance(served.status(KEY), Published)
    first = served.generation()
    collector.inventory.delete(images=[KEY])
    assert isinstance(served.status(KEY), Published), "kept in memory meanwhile"
    clock.advance(PUBLISHED_TTL)
    assert served.generation() != first
    assert served.status(KEY) is None


def test_a_manifest_published_twice_keeps_its_bytes(state: StateUnderTest) -> None:
    manifests = sample_manifests()
    state.publish(KEY, manifests)
    state.publish(sample_job("again").key, manifests)
    for m in manifests:
        assert state.manifest(m.digest) == m
    assert state.status(KEY) == state.status(sample_job("again").key)


def sample_referrers(manifests: list[Manifest], kind: str = "application/x.test") -> list[Manifest]:
    return [artifact_manifest(kind, b"about", "about.txt", m, {}) for m in manifests]


def test_referrers_are_published_with_the_image_and_found_by_subject(state: StateUnderTest) -> None:
    manifests = sample_manifests()
    referrers = sample_referrers(manifests)
    assert state.referrers(manifests[0].digest) == []
    state.publish(KEY, manifests, referrers)
    assert state.status(KEY) == Published({m.media_type: m.digest for m in manifests})
    for manifest, referrer in zip(manifests, referrers, strict=True):
        assert state.referrers(manifest.digest) == [referrer]
        assert state.manifest(referrer.digest) == referrer
    assert state.referrers(sample_manifests("other")[0].digest) == []


def test_an_images_referrers_are_kept_and_collected_with_it(state: StateUnderTest) -> None:
    if isinstance(state, MemoryState):
        pytest.skip("the fake keeps no inventory for `nixery gc`")
    manifests = sample_manifests()
    referrers = sample_referrers(manifests)
    state.publish(KEY, manifests, referrers)
    (record,) = state.images()
    assert set(record.manifests) == {m.digest for m in [*manifests, *referrers]}
    state.delete(images=[KEY], manifests=[m.digest for m in [*manifests, *referrers]])
    assert state.referrers(manifests[0].digest) == []


def test_the_inventory_reads_the_manifests_the_images_were_published_with(
    state: StateUnderTest,
) -> None:
    if isinstance(state, MemoryState):
        pytest.skip("the fake keeps no inventory for `nixery gc`")
    manifests = sample_manifests()
    state.publish(KEY, manifests, sample_referrers(manifests))
    for manifest in manifests:
        assert state.inventory.manifest(manifest.digest) == manifest
    assert state.inventory.manifest(sample_manifests("other")[0].digest) is None


def test_a_referrer_two_images_share_stays_with_the_one_kept(state: StateUnderTest) -> None:
    """Two keys may publish the same manifest and SBOM (an `arm64/` image and a platform of
    a multi-platform one); collecting one leaves the other's referrers whole."""
    if isinstance(state, MemoryState):
        pytest.skip("the fake keeps no inventory for `nixery gc`")
    manifests = sample_manifests()
    referrers = sample_referrers(manifests)
    other = sample_job("other").key
    state.publish(KEY, manifests, referrers)
    state.publish(other, manifests, referrers)
    state.delete(images=[other])
    assert state.referrers(manifests[0].digest) == [referrers[0]]
    (record,) = state.images()
    assert {r.digest for r in referrers} <= set(record.manifests)


class _NoBlobs:
    """A blob store with nothing in it: these tests collect records alone."""

    def blobs(self) -> list:
        return []

    def delete(self, digest: str) -> None:
        raise AssertionError("nothing to delete")


def test_gc_collects_reports_of_builds_that_never_finished(state: StateUnderTest) -> None:
    """Interrupted, or silent ("building" with no word): once older than the grace period,
    their pages go; a recent one, a finished one, a live image's and a remembered failure's
    stay."""
    if isinstance(state, MemoryState):
        pytest.skip("the fake keeps no inventory for `nixery gc`")
    grace, now = 1200.0, AT + 10_000
    old, recent = now - grace - 1, now - grace + 60
    jobs = {name: sample_job(name) for name in
            ("interrupted", "silent", "recent", "published", "live", "remembered")}  # fmt: skip
    for name, job in jobs.items():
        status = "interrupted" if name == "interrupted" else "building"
        if name == "published":
            status = "published"
        started = recent if name == "recent" else old
        state.record_report(replace(sample_report(job.key, started=started), status=status))
    state.publish(jobs["live"].key, sample_manifests())
    state.record_failure(
        jobs["remembered"].key, Failure(FailureKind.BUILD_ERROR, "broken", {"log": ""}, now)
    )
    unfinished = dict(state.inventory.unfinished_reports())
    assert set(unfinished) == {
        jobs[n].key for n in ("interrupted", "silent", "recent", "live", "remembered")
    }
    assert unfinished[jobs["recent"].key] == recent
    report = collect(state.inventory, _NoBlobs(), max_age=86400, grace=grace,
                     failure_ttl=3600, now=now, apply=True)  # fmt: skip
    assert sorted(report.reports) == sorted([jobs["interrupted"].key, jobs["silent"].key])
    assert "2 unfinished build reports" in report.summary(True)
    kept = {name for name, job in jobs.items() if state.report(job.key) is not None}
    assert kept == {"recent", "published", "live", "remembered"}


def test_a_missing_manifest_digest_is_none_even_beside_others(state: StateUnderTest) -> None:
    state.publish(KEY, sample_manifests())
    assert state.manifest(sample_manifests("other")[0].digest) is None


def test_the_layer_cache_round_trips_and_misses(state: StateUnderTest) -> None:
    layer = LayerBlob("sha256:" + "a" * 64, "sha256:" + "b" * 64, 123_456_789_012)
    state.record_layer("paths-1", layer)
    assert state.layer("paths-1") == layer
    assert state.layer("paths-2") is None


def test_concurrent_publishes_of_one_key_end_consistent(state: StateUnderTest) -> None:
    """Builders racing on one key (each with its own bytes) leave one builder's image whole,
    never a mix, and every digest it names resolves."""
    sets = [sample_manifests(f"build-{i}") for i in range(8)]
    assert all_at_once([partial(state.publish, KEY, manifests) for manifests in sets]) == []
    status = state.status(KEY)
    assert isinstance(status, Published)
    assert dict(status.manifests) in [{m.media_type: m.digest for m in s} for s in sets]
    for media_type, digest in status.manifests.items():
        found = state.manifest(digest)
        assert found is not None and found.media_type == media_type


# --- Firestore's build records ---------------------------------------------------------

PICKUP = 30.0
TTL = 60.0
HOLD = 45.0  # a released build left to the queue's retry


def assert_pending(status: object, seconds: float) -> None:
    """A lease of ``seconds`` that started just now, by the database's clock."""
    assert isinstance(status, Pending)
    assert seconds - 10 < status.lease_left <= seconds


@pytest.mark.e2e
class TestFirestoreBuildRecords:
    """Leases run on the emulator's clock; the fake clock only adds skew to it, which is how
    time passes here."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock(0.0)

    @pytest.fixture
    def prefix(self) -> str:
        return f"t{uuid.uuid4().hex}_"

    @pytest.fixture
    def records(self, firestore_client, clock: FakeClock, prefix: str) -> AllPorts:
        return firestore_ports(firestore_client, prefix=prefix, skew=clock)

    @pytest.fixture
    def attempt(self, records: AllPorts) -> Callable[[], int]:
        return lambda: records.builds.document(KEY).get().to_dict()["attempt"]

    def test_start_creates_once_while_the_lease_is_live(self, records, clock, attempt) -> None:
        job = sample_job()
        assert records.start(job, PICKUP) == 1
        assert_pending(records.status(KEY), PICKUP)
        clock.advance(PICKUP - 11)
        assert records.start(job, PICKUP) is None
        assert attempt() == 1

    def test_a_lapsed_lease_is_taken_over_with_the_next_attempt(self, records, clock, attempt):
        job = sample_job()
        assert records.start(job, PICKUP)
        clock.advance(PICKUP + 1)
        assert records.start(job, PICKUP) == 2
        assert attempt() == 2
        assert_pending(records.status(KEY), PICKUP)
        assert records.start(job, PICKUP) is None

    def test_start_leaves_a_published_image_and_takes_a_failed_one_over(self, records, attempt):
        job = sample_job()
        records.record_failure(KEY, Failure.of(BuildFailed("broken"), AT))
        assert records.start(job, PICKUP) == 1
        assert isinstance(records.status(KEY), Pending)
        records.publish(KEY, sample_manifests())
        assert records.start(job, PICKUP) is None
        assert isinstance(records.status(KEY), Published)

    def test_builders_that_keep_dying_end_in_a_failure(self, records, clock, attempt) -> None:
        """Each start gets a new attempt (a task name of its own); after MAX_ATTEMPTS builders
        died holding the lease, the build is recorded as failed, not started again. A start
        after that failure begins a new round, still with new attempt numbers."""
        job = sample_job()
        starts = []
        for _ in range(MAX_ATTEMPTS):
            starts.append(records.start(job, PICKUP))
            assert records.claim(job, "builder", TTL) == "taken"
            clock.advance(TTL + 1)  # the builder died with its lease
        assert starts == list(range(1, MAX_ATTEMPTS + 1))
        assert records.start(job, PICKUP) is None
        failed = records.status(KEY)
        assert isinstance(failed, Failure) and failed.kind is FailureKind.BUILD_ERROR
        assert f"stopped {MAX_ATTEMPTS} times" in failed.message
        assert records.start(job, PICKUP) == MAX_ATTEMPTS + 1, "a new round, a new task name"

    def test_a_task_that_waits_for_a_builder_is_enqueued_again_but_never_failed(
        self, records, clock
    ) -> None:
        """The pickup wait is not the lease: a queue too busy to reach the build within it
        gets the build again (a new task name), and that counts as no builder's death."""
        job = sample_job()
        for attempt in range(1, 2 * MAX_ATTEMPTS + 2):
            assert records.start(job, PICKUP) == attempt
            clock.advance(PICKUP + 1)  # no builder took it
        assert records.claim(job, "builder", TTL) == "taken"
        assert_pending(records.status(KEY), TTL)

    def test_a_machine_with_a_fast_clock_cannot_take_a_live_lease(
        self, firestore_client, records, prefix
    ) -> None:
        """Leases are judged by Firestore's clock: an instance whose own clock runs an hour
        ahead neither steals a live claim nor starts a second build."""
        job = sample_job()
        records.start(job, PICKUP)
        assert records.claim(job, "builder-a", TTL) == "taken"
        ahead = firestore_ports(firestore_client, prefix=prefix, clock=lambda: AT + 3600)
        assert ahead.claim(job, "builder-b", TTL) == "busy"
        assert ahead.start(job, PICKUP) is None
        assert_pending(ahead.status(KEY), TTL)

    def test_claim_is_taken_then_busy_for_others_then_done(self, records, clock) -> None:
        job = sample_job()
        records.start(job, PICKUP)
        assert records.claim(job, "builder-a", TTL) == "taken"
        assert_pending(records.status(KEY), TTL)
        assert records.claim(job, "builder-b", TTL) == "busy"
        assert records.claim(job, "builder-a", TTL) == "taken"  # a redelivery to the owner
        records.publish(KEY, sample_manifests())
        assert records.claim(job, "builder-b", TTL) == "done"

    def test_claim_of_a_failed_build_is_done(self, records) -> None:
        records.record_failure(KEY, Failure.of(UnknownPackages(["nosuch"]), AT))
        assert records.claim(sample_job(), "builder-a", TTL) == "done"

    def test_a_lapsed_claim_is_taken_over_and_its_owner_cannot_renew(self, records, clock):
        job = sample_job()
        records.start(job, PICKUP)
        assert records.claim(job, "builder-a", TTL) == "taken"
        clock.advance(TTL / 2)
        assert records.renew(KEY, "builder-a", TTL) is True
        assert_pending(records.status(KEY), TTL)
        clock.advance(TTL + 1)
        assert records.claim(job, "builder-b", TTL) == "taken"
        assert records.renew(KEY, "builder-a", TTL) is False
        assert records.renew(KEY, "builder-b", TTL) is True

    def test_renew_fails_once_the_build_finished(self, records) -> None:
        job = sample_job()
        records.claim(job, "builder-a", TTL)
        records.publish(KEY, sample_manifests())
        assert records.renew(KEY, "builder-a", TTL) is False

    def test_release_hands_the_build_back_to_the_queue_with_its_cause(
        self, records, clock, attempt
    ) -> None:
        """Released, a build says why until a builder claims it or it starts afresh, is left
        to the queue's retry for ``hold`` seconds (any builder may claim it), and is enqueued
        again by a request after that, counting no builder's death."""
        job = sample_job()
        records.start(job, PICKUP)
        records.claim(job, "builder-a", TTL)
        records.release(KEY, "builder-b", "storage down", HOLD)  # not the owner: nothing
        assert records.status(KEY).cause == ""
        records.release(KEY, "builder-a", "storage down", HOLD)
        status = records.status(KEY)
        assert_pending(status, HOLD)
        assert status.cause == "storage down"
        assert records.start(job, PICKUP) is None, "the queue retries it"
        assert records.claim(job, "builder-b", TTL) == "taken"
        assert records.status(KEY).cause == "", "the retry under way is waited for"
        records.release(KEY, "builder-b", "storage down", HOLD)
        clock.advance(HOLD + 1)
        assert records.start(job, PICKUP) == 2
        assert attempt() == 2
        assert records.status(KEY).cause == ""
        assert records.builds.document(KEY).get().to_dict()["deaths"] == 0

    def test_a_build_given_back_again_and_again_is_recorded_failed(self, records, clock) -> None:
        """The ``MAX_RELEASES``th release in a row records a failure, kept for
        NIXERY_FAILURE_TTL, not a hold; a pull starts it afresh after that, counting anew."""
        job = sample_job()
        records.start(job, PICKUP)
        for n in range(MAX_RELEASES):
            if n % 2:  # an unclaimed hold: a request enqueues it again
                clock.advance(HOLD + 1)
                assert records.start(job, PICKUP)
            assert records.claim(job, f"builder-{n}", TTL) == "taken"
            records.release(KEY, f"builder-{n}", "storage down", HOLD)
        failure = records.status(KEY)
        assert isinstance(failure, Failure), failure
        assert failure.message == given_up(MAX_RELEASES, "storage down")
        assert records.start(job, PICKUP) is not None
        assert records.claim(job, "builder-x", TTL) == "taken"
        records.release(KEY, "builder-x", "storage down", HOLD)
        assert isinstance(records.status(KEY), Pending)


@pytest.mark.parametrize("kind", [pytest.param("firestore", marks=pytest.mark.e2e), "memory"])
def test_a_listener_hears_the_record_at_once_then_each_change_until_closed(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """What ``TaskBuildQueue`` waits on, from Firestore and from the fake alike."""
    records: StateUnderTest = MemoryState()
    if kind == "firestore":
        client = request.getfixturevalue("firestore_client")
        records = firestore_ports(client, prefix=f"t{uuid.uuid4().hex}_")
    heard: queue.Queue[ImageStatus] = queue.Queue()
    job = sample_job()
    listening = records.listen(job.key, heard.put)
    assert heard.get(timeout=10) is None
    records.start(job, PICKUP)
    assert_pending(heard.get(timeout=10), PICKUP)
    manifests = sample_manifests()
    records.publish(job.key, manifests)
    assert heard.get(timeout=10) == Published({m.media_type: m.digest for m in manifests})
    assert listening.is_active
    listening.unsubscribe()
    assert not listening.is_active
    records.forget(job.key)
    time.sleep(0.5)
    assert heard.empty()


@pytest.mark.parametrize("error_type", [BuildFailed, BuildTimedOut])
def test_a_huge_failure_is_stored_bounded_keeping_the_end_of_its_log(
    state: StateUnderTest, error_type: type[BuildFailed]
) -> None:
    """A Firestore document holds at most 1 MiB: a 5 MB log and a 1 MB message are stored
    cut, in every store alike, the log keeping its end (where Nix puts the error)."""
    lines = [f'building step {i}: "quoted" \\ é ✓' for i in range(150_000)]
    log = "\n".join([*lines, "error: builder for '/nix/store/x.drv' failed with exit code 1"])
    assert len(log.encode()) > 5_000_000, "a 5 MB log"
    state.record_failure(KEY, Failure.of(error_type("m" * 1_000_000, log), AT))
    found = state.status(KEY)
    assert isinstance(found, Failure) and found.at == AT
    again = found.error()
    assert type(again) is error_type
    assert len(again.log_tail) < MAX_LOG + 100 and again.log_tail.endswith(log[-MAX_LOG:])
    assert again.log_tail.startswith("[nixery: ")
    assert len(found.message) < MAX_MESSAGE + 100 and found.message.startswith("mmm")


def test_a_failure_within_bounds_is_stored_unchanged(state: StateUnderTest) -> None:
    failure = Failure.of(BuildFailed("m" * MAX_MESSAGE, "x" * MAX_LOG), AT)
    state.record_failure(KEY, failure)
    assert state.status(KEY) == failure


# --- Build reports and package names (the pages) ---------------------------------------


ENV = "/nix/store/cccc-python3-3.11.5-env"
REQUESTS = ("python3packages.requests",)
CONTENTS = ("/nix/store/dddd-requests-2.31.0",)


def sample_report(key: str = KEY, started: float = AT, layers: tuple[str, ...] = ()) -> BuildReport:
    return BuildReport(
        key=key,
        packages=("cacert", "hello"),
        system="x86_64-linux",
        revision="path@abc",
        started=started,
        status="published",
        step="manifests",
        finished=started + 1.5,
        outputs={"hello": "/nix/store/aaaa-hello-2.12.1"},
        closure={"/nix/store/aaaa-hello-2.12.1": 1800, "/nix/store/bbbb-glibc-2.37": 8_000_000},
        layers=tuple(LayerReport(d, 100, 1800, ("/nix/store/aaaa-hello-2.12.1",)) for d in layers),
        manifests={OCI_MANIFEST: "sha256:" + "1" * 64},
        failure=FailureReport("build_error", "it <b>broke</b>", "line\n<script>x</script>\n"),
        environments=(Environment("python", "python3-3.11.5", ENV, REQUESTS, CONTENTS, "python3"),),
        plain=("nodepackages.prettier",),
        steps=(StepTime("queue", started - 0.1, started), StepTime("checkout", started, started)),
    )


def test_a_report_round_trips_and_a_later_one_replaces_it(state: StateUnderTest) -> None:
    assert state.report(KEY) is None
    report = sample_report(layers=("sha256:" + "a" * 64,))
    state.record_report(report)
    assert state.report(KEY) == report
    later = replace(report, status="failed", step="nix", layers=())
    state.record_report(later)
    assert state.report(KEY) == later


def test_a_report_written_before_environments_reads_without_them() -> None:
    """Reports that stores kept before environments existed have neither field."""
    old = sample_report().to_json()
    del old["environments"], old["plain"]
    report = BuildReport.decode(json.dumps(old))
    assert report.environments == () and report.plain == ()
    assert report == replace(sample_report(), environments=(), plain=())


def test_a_report_gets_its_answer_step_which_outlives_its_rewrites(state: StateUnderTest):
    """The registry notes the answer apart from the report, which the builder may write
    after it; an earlier build's answer is no step of a rebuild's report. The first answer
    of a build is kept (the request that started it, as docs/clients.md says)."""
    report = sample_report()
    state.record_report(report)
    state.record_answer(KEY, AT + 2)
    state.record_answer(KEY, AT + 3)  # another instance's waiters
    state.record_report(replace(report, status="published"))
    answer = state.report(KEY).steps[-1]
    assert (answer.step, answer.ended) == ("answer", AT + 2)
    assert answer.began == report.finished, "from the build's end (no publish step here)"
    assert state.recent_reports(1)[0].steps[-1] == answer
    state.record_report(replace(report, started=AT + 10))
    assert [s.step for s in state.report(KEY).steps] == ["queue", "checkout"]
    state.record_answer(KEY, AT + 12)
    assert state.report(KEY).steps[-1].ended == AT + 12


def test_a_report_stored_before_steps_were_timed_still_reads() -> None:
    report = sample_report()
    older = report.to_json()
    del older["steps"]
    assert BuildReport.decode(json.dumps(older)) == replace(report, steps=())


def test_a_build_interrupted_or_silent_too_long_reads_as_interrupted(state: StateUnderTest) -> None:
    """What the pages read of a build stopped by a transient fault, said by its builder, or
    (when even that could not be written) judged by the report's age: never "building" for
    ever. The page reads a fixed phrase for the cause, never the error's details."""
    clock = FakeClock(AT)
    catalog = Catalog(StaticSource({}), state, state, state, deadline=600, clock=clock)
    stopped, silent = sample_job("stopped"), sample_job("silent")
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/storage/blobs/x")
    try:
        raise StorageUnavailable("the blob store cannot write in /srv/storage") from full
    except StorageUnavailable as e:
        Reporter(state, stopped, clock).interrupted(e, state)
    Reporter(state, silent, clock).close()
    report, status = catalog.build(stopped.key)
    assert status is None and report is not None
    assert report.status == "interrupted" and report.finished == AT
    assert report.failure == FailureReport("interrupted", DISK_FULL, "")
    clock.advance(1199)
    assert catalog.build(silent.key)[0].status == "building", "a slow build is still building"
    clock.advance(2)
    judged = catalog.build(silent.key)[0]
    assert judged.status == "interrupted" and judged.failure.message == SILENT
    assert {r.key: r.status for r in catalog.latest()} == {
        stopped.key: "interrupted",
        silent.key: "interrupted",
    }


def test_a_silent_build_whose_image_was_published_or_failed_reads_so(
    state: StateUnderTest,
) -> None:
    """Its last report was lost, not its outcome: the image's status is the authority."""
    clock = FakeClock(AT)
    catalog = Catalog(StaticSource({}), state, state, state, deadline=600, clock=clock)
    published, failed = sample_job("published"), sample_job("failed")
    Reporter(state, published, clock).close()
    Reporter(state, failed, clock).close()
    state.publish(published.key, sample_manifests())
    state.record_failure(failed.key, Failure(FailureKind.BUILD_ERROR, "broken", {"log": "l"}, AT))
    clock.advance(1201)
    assert catalog.build(published.key)[0].status == "published"
    judged = catalog.build(failed.key)[0]
    assert judged.status == "failed" and judged.failure == FailureReport(
        "build_error", "broken", "l"
    )
    assert {r.key: r.status for r in catalog.latest()} == {
        published.key: "published",
        failed.key: "failed",
    }


def test_an_interruption_is_not_reported_over_a_published_image(state: StateUnderTest) -> None:
    """A publication that raised after it was made, or another build's: the report is left
    as it was."""
    job = sample_job("raced")
    reporter = Reporter(state, job, FakeClock(AT))
    state.publish(job.key, sample_manifests())
    reporter.interrupted(DatabaseUnavailable("the answer was lost"), state)
    assert state.report(job.key).status == "building"


class _Unreadable:
    """Images whose status cannot be read: a bug's exception, not a ``Transient``."""

    def status(self, key: str) -> None:
        raise RuntimeError("not a Transient")


def test_an_interruption_that_cannot_be_reported_is_logged_not_raised(
    state: StateUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    job = sample_job("unreported")
    Reporter(state, job, FakeClock(AT)).interrupted(ValueError("a bug"), _Unreadable())
    assert state.report(job.key).status == "building"
    assert "could not be reported" in caplog.text


def test_recent_reports_come_latest_first_and_are_limited(state: StateUnderTest) -> None:
    for i in range(5):
        state.record_report(sample_report(sample_job(f"p{i}").key, started=AT + i))
    recent = state.recent_reports(3)
    assert [r.started for r in recent] == [AT + 4, AT + 3, AT + 2]
    assert state.recent_reports(10)[-1].key == sample_job("p0").key


def test_layer_users_counts_the_reports_holding_a_layer_up_to_the_limit(
    state: StateUnderTest,
) -> None:
    shared, own = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    state.record_report(sample_report(sample_job("x").key, layers=(shared, own)))
    state.record_report(sample_report(sample_job("y").key, layers=(shared,)))
    state.record_report(sample_report(sample_job("z").key, layers=(shared,)))
    assert state.layer_users(shared, 2) == 2
    assert state.layer_users(shared, 10) == 3
    assert state.layer_users(own, 10) == 1
    assert state.layer_users("sha256:" + "c" * 64, 10) == 0
    state.record_report(sample_report(sample_job("x").key, layers=()))
    assert state.layer_users(own, 10) == 0, "a replaced report no longer holds its layers"


def test_package_names_round_trip_per_revision_and_are_bounded(state: StateUnderTest) -> None:
    revision = "git:https://example.org/pkgs.git@" + "0" * 40
    assert state.package_names(revision) is None
    state.record_package_names(revision, ["zlib", "hello", "python3Packages.requests"])
    assert state.package_names(revision) == ["hello", "python3Packages.requests", "zlib"]
    assert state.package_names(revision + "x") is None
    state.record_package_names("empty", [])
    assert state.package_names("empty") == []
    many = [f"package{i:07d}" for i in range(MAX_PACKAGE_NAMES // 10)]
    state.record_package_names(revision, many)
    kept = state.package_names(revision)
    assert kept == many[: len(kept)] and 0 < len(kept) < len(many)
    assert sum(len(n) + 1 for n in kept) <= MAX_PACKAGE_NAMES


# --- SQLite's faults -------------------------------------------------------------------
# Each is DatabaseUnavailable naming its cause (a 503 with Retry-After), never sqlite3's own
# error (a 500), and the adapter works again once the fault is gone. Firestore's faults (a
# service that fails or stops answering) are test_gcp_faults'; the fake has none.

LOCK_WAIT = 0.1  # seconds a statement waits here for another process's lock
LAYER = LayerBlob("sha256:" + "a" * 64, "sha256:" + "b" * 64, 1234)


def sqlite_writes(state: AllPorts) -> dict[str, Callable[[], object]]:
    """One call of each write of the port, each changing what ``published_sqlite`` holds."""
    later = time.time() + 3600  # a touch that changes the use recorded
    return {
        "publish": partial(state.publish, KEY, sample_manifests("again")),
        "touch": partial(state.touch, KEY, later),
        "forget": partial(state.forget, KEY),
        "record_failure": partial(state.record_failure, KEY, Failure.of(BuildFailed("x"), AT)),
        "record_layer": partial(state.record_layer, "paths-2", LAYER),
        "record_report": partial(state.record_report, sample_report(started=later)),
        "record_package_names": partial(state.record_package_names, "rev-2", ["hello"]),
    }


def assert_holds_what_was_published(state: AllPorts) -> None:
    manifests = sample_manifests()
    assert state.status(KEY) == Published({m.media_type: m.digest for m in manifests})
    assert state.manifest(manifests[0].digest) == manifests[0]
    assert state.layer("paths-1") == LAYER
    assert state.report(KEY) == sample_report()
    assert state.package_names("rev-1") == ["hello"]


def assert_unavailable(call: Callable[[], object], cause: str) -> None:
    with pytest.raises(DatabaseUnavailable) as raised:
        call()
    assert raised.value.message == f"the state database {cause}"
    assert isinstance(raised.value.__cause__, sqlite3.Error)


@pytest.fixture
def published_sqlite(tmp_path: Path) -> Path:
    """A database on disk that holds an image, a layer, a report and a name list."""
    path = tmp_path / "state.db"
    state = sqlite_ports(path)
    state.publish(KEY, sample_manifests())
    state.record_layer("paths-1", LAYER)
    state.record_report(sample_report())
    state.record_package_names("rev-1", ["hello"])
    return path


def test_the_sqlite_generation_moves_with_deletions_by_any_connection_only(
    published_sqlite: Path,
) -> None:
    """What a registry answers from memory holds while it stays: a publication, a pull's
    record, a report leave it; `nixery gc` (another process: another connection) and a
    forgotten image move it, seen by every thread at its next call."""
    served = sqlite_ports(published_sqlite)
    collector = sqlite_ports(published_sqlite)
    first = served.generation()
    served.publish("another", sample_manifests())
    served.touch(KEY, AT)
    collector.record_report(sample_report())
    assert served.generation() == first
    collector.inventory.delete(images=["another"])
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(served.generation())) for _ in "ab"]
    for thread in threads:
        thread.start()
        thread.join()
    seen.append(served.generation())
    assert len(set(seen)) == 1 and seen[0] != first
    served.forget(KEY)
    assert served.generation() not in (first, seen[0])
    with locked(published_sqlite):  # readers go on (WAL)
        assert served.generation() == collector.generation()


def test_the_sqlite_generation_moves_when_gc_deletes_only_layers(published_sqlite: Path) -> None:
    """gc's last deletion may hold layer rows alone, their blobs gone just before: what a
    registry answers from memory may name one, so it checks again."""
    served = sqlite_ports(published_sqlite)
    first = served.generation()
    sqlite_ports(published_sqlite).inventory.delete(layers=["paths-1"])
    assert served.generation() != first


def test_sqlite_writes_while_another_process_holds_the_lock_are_unavailable_naming_it(
    published_sqlite: Path,
) -> None:
    """Readers go on (WAL); each write waits its busy timeout, then says who is in the way;
    once the lock is released, every write goes through (none was left half-done)."""
    state = sqlite_ports(published_sqlite, busy_timeout=LOCK_WAIT)
    with locked(published_sqlite):
        for write in sqlite_writes(state).values():
            started = time.monotonic()
            assert_unavailable(write, "is locked by another process")
            assert time.monotonic() - started < LOCK_WAIT + 1
        assert_holds_what_was_published(state)
    for write in sqlite_writes(state).values():
        write()
    assert state.package_names("rev-2") == ["hello"]


def test_a_read_only_sqlite_database_serves_what_it_holds_and_its_writes_name_it(
    published_sqlite: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with read_only(published_sqlite):
        state = sqlite_ports(published_sqlite)  # starts: it has images to serve
        assert "the state database is read-only" in caplog.text
        assert_holds_what_was_published(state)
        for write in sqlite_writes(state).values():
            assert_unavailable(write, "is read-only")


def test_sqlite_on_a_full_disk_is_unavailable_naming_it_and_writes_again_with_room(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        state = sqlite_ports(disk / "state.db")
        state.publish(KEY, sample_manifests())
        filler = fill(disk)
        many = [f"package{i:07d}" for i in range(50_000)]  # 750 KB: the WAL must grow
        assert_unavailable(
            partial(state.record_package_names, "rev", many), "cannot grow: the disk is full"
        )
        assert isinstance(state.status(KEY), Published)
        filler.unlink()
        state.record_package_names("rev", many)
        assert state.package_names("rev") == many


def test_sqlite_on_a_failing_disk_is_unavailable_naming_an_io_error(
    published_sqlite: Path,
) -> None:
    """Every write fails, and so does every read that is not in a connection's cache (here
    a second connection's, which has read none of it)."""
    writer = sqlite_ports(published_sqlite)
    reader = sqlite_ports(published_sqlite)
    fail_reads_and_writes(published_sqlite)
    for write in sqlite_writes(writer).values():
        assert_unavailable(write, "cannot be read or written: an I/O error")
    assert_unavailable(partial(reader.status, KEY), "cannot be read or written: an I/O error")


def test_a_damaged_sqlite_database_is_named_at_start(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database, whatever its name says" * 100)
    with pytest.raises(DatabaseUnavailable, match=r"^the state database is damaged"):
        sqlite_ports(path)
