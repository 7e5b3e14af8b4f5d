"""The build report's background writer: a write that failed is not lost with its thread."""

from __future__ import annotations

import threading
import time

import pytest

from nixery.errors import DatabaseUnavailable
from nixery.pipeline.progress import Reporter
from nixery.records import BuildReport, Failure, FailureKind
from tests.helpers.fakes import FakeClock, MemoryState, sample_job


class _Reports:
    """Reports whose writes fail while ``down``: a fake of the database's outage, which
    the emulators cannot stage between two writes of one build."""

    def __init__(self) -> None:
        self.down = True
        self.written: list[BuildReport] = []
        self.tried = threading.Event()

    def record_report(self, report: BuildReport) -> None:
        self.tried.set()
        if self.down:
            raise DatabaseUnavailable("the database is down")
        self.written.append(report)


def test_the_outcome_raises_a_write_that_failed_before_it() -> None:
    reports = _Reports()
    reporter = Reporter(reports, sample_job(), FakeClock())
    assert reports.tried.wait(10)
    with pytest.raises(DatabaseUnavailable):
        reporter.failed(Failure(FailureKind.BUILD_ERROR, "broken", {}, 0.0))


def test_a_later_write_that_succeeds_makes_up_for_a_failed_one() -> None:
    reports = _Reports()
    reporter = Reporter(reports, sample_job(), FakeClock())
    assert reports.tried.wait(10)
    reports.down = False
    reporter.failed(Failure(FailureKind.BUILD_ERROR, "broken", {}, 0.0))
    assert reports.written[-1].status == "failed"


def test_an_interruption_waits_for_the_writes_and_logs_their_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports = _Reports()
    reporter = Reporter(reports, sample_job(), FakeClock())
    reporter.interrupted(DatabaseUnavailable("the database is down"), MemoryState())
    assert "could not be reported" in caplog.text


def test_a_failed_write_goes_on_to_the_version_queued_behind_it() -> None:
    """Write N-1 fails while N waits: N is still written by the writer, without ``close``."""
    reports = _Reports()
    entered, go_on = threading.Event(), threading.Event()
    fail_once = reports.record_report

    def record_report(report: BuildReport) -> None:
        if not entered.is_set():
            entered.set()
            assert go_on.wait(10)
            fail_once(report)  # down: fails
        reports.down = False
        fail_once(report)

    reports.record_report = record_report  # type: ignore[method-assign]
    reporter = Reporter(reports, sample_job(), FakeClock())
    assert entered.wait(10)
    reporter.update(step="build")  # queued behind the failing write
    go_on.set()
    for _ in range(100):
        if reports.written:
            break
        time.sleep(0.05)
    assert [r.step for r in reports.written] == ["build"]


def test_a_published_image_whose_report_cannot_be_written_is_no_failed_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports = _Reports()
    reporter = Reporter(reports, sample_job(), FakeClock())
    reporter.published([])
    assert "could not be written" in caplog.text
