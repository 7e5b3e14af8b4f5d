"""The builder's ``BuildWorker`` against the in-memory records (``MemoryState``, a fake of
Firestore's lease rules, which the e2e tests run for real): what a released build tells the
clients waiting for it."""

from __future__ import annotations

from typing import cast

import pytest
from google.api_core import exceptions

from nixery.config import Env
from nixery.errors import INTERRUPTIONS, ConfigError, StorageUnavailable
from nixery.gcp.builder_app import BuildWorker
from nixery.gcp.deadline import Deadline
from nixery.gcp.firestore_state import FirestoreBuildRecords
from nixery.gcp.settings import Backoff, backoff_settings
from nixery.pipeline.builder import Builder
from nixery.records import MAX_RELEASES, Failure, Pending, given_up
from tests.helpers.fakes import FakeBuilder, FakeClock, MemoryState, sample_job

# What a GCS resumable upload's error may say: its URL grants writes to the bucket.
UPLOAD_URL = "https://storage.googleapis.com/upload/storage/v1/b/x/o?upload_id=SECRET"


def _deadline_error() -> StorageUnavailable:
    deadline = Deadline("Cloud Storage", StorageUnavailable, 5)
    try:
        with deadline.translated():
            raise exceptions.ServiceUnavailable(f"PUT {UPLOAD_URL}: 503")
    except StorageUnavailable as e:
        return e
    raise AssertionError("not translated")


def test_a_translated_error_names_the_service_not_the_library_text() -> None:
    error = _deadline_error()
    assert "SECRET" not in error.message and "Cloud Storage" in error.message


@pytest.mark.parametrize("message", [f"upload to {UPLOAD_URL} failed", "x"])
def test_a_released_build_keeps_only_its_kind_phrase(message: str) -> None:
    state = MemoryState()
    job = sample_job("hello")
    builder = FakeBuilder(state, StorageUnavailable(message), seconds=0)
    worker = BuildWorker(cast(Builder, builder), cast(FirestoreBuildRecords, state), 30)
    status, body = worker.handle(job)
    assert status == 503 and "SECRET" not in body
    pending = state.status(job.key)
    assert isinstance(pending, Pending)
    assert pending.cause == INTERRUPTIONS[StorageUnavailable]


def test_the_hold_follows_the_queues_backoff() -> None:
    """terraform/tasks.tf's schedule: 10, 20, 40, 80, 160 s, then 300 s."""
    backoff = Backoff()
    assert [backoff.before_retry(n) for n in range(8)] == [10, 20, 40, 80, 160, 300, 300, 300]
    assert Backoff(1, 1000, 2).before_retry(4) == 12, "linear after the doublings"


@pytest.mark.parametrize("retries", [0, 4, 9])
def test_a_build_given_back_is_held_until_the_queues_retry_is_due(retries: int) -> None:
    """Held for a shorter time, a pull would enqueue a second task before the queue's retry."""
    clock = FakeClock()
    state = MemoryState(clock)
    job = sample_job("hello")
    builder = FakeBuilder(state, StorageUnavailable("down"), seconds=0)
    worker = BuildWorker(cast(Builder, builder), cast(FirestoreBuildRecords, state), 30)
    assert worker.handle(job, retries=retries)[0] == 503
    pending = state.status(job.key)
    assert isinstance(pending, Pending)
    assert pending.lease_left == Backoff().before_retry(retries) + 30


def test_a_build_given_back_again_and_again_is_recorded_failed() -> None:
    """A fault that lasts is no passing one: after MAX_RELEASES in a row the build is a
    failure (retried by a pull after NIXERY_FAILURE_TTL), not retried by every pull."""
    state = MemoryState()
    job = sample_job("hello")
    builder = FakeBuilder(state, StorageUnavailable("down"), seconds=0)
    worker = BuildWorker(cast(Builder, builder), cast(FirestoreBuildRecords, state), 30)
    for retries in range(MAX_RELEASES - 1):
        assert worker.handle(job, retries=retries)[0] == 503
        assert isinstance(state.status(job.key), Pending)
    assert worker.handle(job, retries=MAX_RELEASES - 1)[0] == 503
    failure = state.status(job.key)
    assert isinstance(failure, Failure)
    assert failure.message == given_up(MAX_RELEASES, INTERRUPTIONS[StorageUnavailable])
    assert state.start(job, 30) is not None, "started afresh"
    assert worker.handle(job)[0] == 503
    assert isinstance(state.status(job.key), Pending), "counted from the fresh start"


def test_the_backoff_comes_from_the_environment() -> None:
    assert backoff_settings(Env({"NIXERY_TASKS_MAX_DOUBLINGS": "2"})) == Backoff(10, 300, 2)
    with pytest.raises(ConfigError, match="NIXERY_TASKS_MAX_BACKOFF"):
        backoff_settings(Env({"NIXERY_TASKS_MIN_BACKOFF": "20", "NIXERY_TASKS_MAX_BACKOFF": "5"}))
    with pytest.raises(ConfigError, match="NIXERY_TASKS_MAX_DOUBLINGS"):
        backoff_settings(Env({"NIXERY_TASKS_MAX_DOUBLINGS": "x"}))
