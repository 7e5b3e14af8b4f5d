"""How long a tag's answer is kept (``Memo``): from when it was asked, once at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from nixery.caches import BoundedCache, Memo, period
from tests.helpers.fakes import FakeClock, all_at_once


def test_an_answer_expires_ttl_after_its_lookup_started_not_ended() -> None:
    clock = FakeClock(0.0)
    memo: Memo[str | None] = Memo(10.0, clock)

    def slow() -> str:
        clock.advance(8)  # a slow ls-remote
        return "abc"

    assert memo.get("latest", slow) == "abc"
    assert memo.get("latest", lambda: "new") == "abc"
    clock.advance(2)  # 10 s after the question
    assert memo.get("latest", lambda: "new") == "new"


def test_none_is_an_answer_kept_and_an_error_is_not() -> None:
    clock = FakeClock(0.0)
    memo: Memo[str | None] = Memo(10.0, clock)
    assert memo.get("nope", lambda: None) is None
    assert memo.get("nope", lambda: "found") is None

    def broken() -> str:
        raise OSError("unreachable")

    with pytest.raises(OSError):
        memo.get("other", broken)
    assert memo.get("other", lambda: "found") == "found"


def test_no_ttl_keeps_nothing() -> None:
    memo: Memo[int] = Memo(0.0, FakeClock(0.0))
    answers = iter(range(3))
    assert [memo.get("k", lambda: next(answers)) for _ in range(3)] == [0, 1, 2]


def test_a_full_memo_drops_the_stale_answers_first_then_the_oldest() -> None:
    clock = FakeClock(0.0)
    memo: Memo[int] = Memo(10.0, clock, size=4)
    for i in range(2):
        memo.get(f"old{i}", lambda i=i: i)
    clock.advance(10)  # old0 and old1 are stale
    for i in range(3):
        memo.get(f"new{i}", lambda i=i: i)
    assert memo.get("new0", lambda: -1) == 0, "kept: the stale ones made room"
    memo.get("new3", lambda: 3)
    memo.get("new4", lambda: 4)  # full of fresh answers: the oldest, new0, goes
    assert memo.get("new0", lambda: -1) == -1
    assert memo.get("new4", lambda: -1) == 4


def test_fetch_reads_a_key_once_for_concurrent_misses_and_keeps_no_none() -> None:
    """The herd that hears an image published at once costs one read of each part."""
    cache: BoundedCache[str] = BoundedCache()
    reads: list[str] = []
    lock = threading.Lock()

    def read() -> str:
        with lock:
            reads.append("read")
        time.sleep(0.05)  # the other misses arrive meanwhile
        return "value"

    assert not all_at_once([lambda: cache.fetch("key", read) for _ in range(20)])
    assert reads == ["read"]
    assert cache.fetch("key", lambda: pytest.fail("a hit reads nothing")) == "value"
    assert cache.fetch("none", lambda: None) is None
    assert cache.fetch("none", lambda: "later") == "later", "a None read is not kept"


def test_a_memo_full_of_fresh_answers_drops_the_oldest_tenth_at_once() -> None:
    """Not one at a time: the next lookups store their answers without evicting again."""
    memo: Memo[int] = Memo(10.0, FakeClock(0.0), size=20)
    for i in range(21):
        memo.get(f"k{i}", lambda i=i: i)
    assert [memo.get(f"k{i}", lambda: -1) for i in (2, 20, 0)] == [2, 20, -1]
    assert memo.get("k2", lambda: -1) == 2, "k0's answer, the 20th, made no eviction"


def test_a_bounded_cache_with_a_period_drops_everything_when_it_moves() -> None:
    clock = FakeClock(0.0)
    cache: BoundedCache[int] = BoundedCache(clock=clock, every=600.0)
    cache.keep("a", 1)
    number = period(600.0, clock)
    while period(600.0, clock) == number:
        assert cache.get("a") == 1
        clock.advance(60)
    assert cache.get("a") is None
    assert clock() <= 600.0, "within one period's length"


@pytest.mark.parametrize("outcome", [None, ValueError("the database is down")])
def test_misses_behind_a_read_get_its_none_or_its_exception_without_reading(
    outcome: ValueError | None,
) -> None:
    """A failed or empty read is not made again by each waiter in turn (each after the last
    one's full timeout): they all get what the first read gave."""
    cache: BoundedCache[str] = BoundedCache()
    reads: list[str] = []
    started, finish = threading.Event(), threading.Event()

    def first() -> str | None:
        reads.append("first")
        started.set()
        assert finish.wait(10)
        if outcome is not None:
            raise outcome
        return None

    def later() -> str:
        reads.append("later")
        return "value"

    answers: list[object] = []

    def call(read: Callable[[], str | None]) -> None:
        try:
            answers.append(cache.fetch("key", read))
        except ValueError as e:
            answers.append(e)

    threads = [threading.Thread(target=call, args=(first,))]
    threads[0].start()
    assert started.wait(10)
    threads += [threading.Thread(target=call, args=(later,)) for _ in range(5)]
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)  # the others wait on the first read
    finish.set()
    for thread in threads:
        thread.join(10)
    assert reads == ["first"]
    assert answers == [outcome] * 6


def test_a_miss_reads_for_itself_once_the_shared_read_outlasts_its_patience() -> None:
    cache: BoundedCache[str] = BoundedCache(patience=0.1)
    started, finish = threading.Event(), threading.Event()

    def stuck() -> str:
        started.set()
        assert finish.wait(10)
        return "late"

    thread = threading.Thread(target=cache.fetch, args=("key", stuck))
    thread.start()
    assert started.wait(10)
    try:
        assert cache.fetch("key", lambda: "own") == "own"
    finally:
        finish.set()
        thread.join(10)
