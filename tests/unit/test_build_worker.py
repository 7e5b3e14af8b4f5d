"""The builder's ``BuildWorker`` against the in-memory records (``MemoryState``, a fake of
Firestore's lease rules, which the e2e tests run for real): what a released build tells the
clients waiting for it."""

from __future__ import annotations

from typing import cast

import pytest
from google.api_core import exceptions

from nixery.errors import INTERRUPTIONS, StorageUnavailable
from nixery.gcp.builder_app import BuildWorker
from nixery.gcp.deadline import Deadline
from nixery.gcp.firestore_state import FirestoreBuildRecords
from nixery.pipeline.builder import Builder
from nixery.records import Pending
from tests.helpers.fakes import FakeBuilder, MemoryState, sample_job

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
