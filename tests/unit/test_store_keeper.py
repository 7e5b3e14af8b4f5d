"""The store keeper's one rule: a collection runs only when no build does, and a build waits
for one under way. The collection itself runs against a real Nix in the builder image's
tests (test_builder_image.py), where the store is the container's own: collecting the host's
store here would delete what other tests build."""

from __future__ import annotations

import threading

from nixery.nix.keeper import StoreKeeper


class RecordingKeeper(StoreKeeper):
    """Records, instead of collecting, how many builds ran when each collection began."""

    def __init__(self) -> None:
        super().__init__(limit=1)
        self.collections: list[int] = []
        self.collecting = threading.Event()
        self.release = threading.Event()

    def _collect(self) -> None:
        self.collections.append(self._builds)
        self.collecting.set()
        assert self.release.wait(10)


def test_the_last_build_to_end_collects_and_the_next_build_waits_for_it() -> None:
    keeper = RecordingKeeper()
    first, second = keeper.build(), keeper.build()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert keeper.collections == [], "a build still runs"
    ender = threading.Thread(target=second.__exit__, args=(None, None, None))
    ender.start()
    assert keeper.collecting.wait(10)
    started = threading.Event()

    def third() -> None:
        with keeper.build():
            started.set()

    waiter = threading.Thread(target=third)
    waiter.start()
    assert not started.wait(0.5), "a build started during a collection"
    keeper.release.set()
    ender.join(10)
    waiter.join(10)
    assert started.is_set()
    assert keeper.collections == [0, 0], "each collection began with no build running"


def test_without_a_limit_nothing_is_collected() -> None:
    keeper = StoreKeeper(limit=None)
    with keeper.build():
        pass
    assert not keeper._collecting
