"""The Nix store's upkeep: kept under a size by collecting garbage between builds.

On Cloud Run the builder's store lives on an in-memory disk: every byte it keeps is memory,
paid for and limited. A build's outputs are garbage-collector roots only while its image is
made (``nix.runner.Nix.build``), so the rest of the store is a cache of paths that later
builds would otherwise fetch again. After a build, when no other build runs, the store is
measured (the sum of its paths' NAR sizes, from Nix's database, which is quick) and, if above
the limit, Nix deletes dead paths until it is a quarter below it, so that not every build
collects.

Collection never overlaps a build: between a build's evaluation and its realisation, its
derivations are nobody's roots, and a collection then would delete them.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nixery.nix.path_info import parse_path_info
from nixery.nix.runner import NIX_COMMAND

log = logging.getLogger(__name__)

# Where a collection stops: this share of the limit.
LOW_WATER = 0.75
_COMMAND_TIMEOUT = 3600.0


def store_size() -> int:
    """The bytes of every valid path in the store, as NARs (about what they take on disk)."""
    out = subprocess.run(
        ["nix", *NIX_COMMAND, "path-info", "--all", "--json"],
        capture_output=True, text=True, check=True, timeout=_COMMAND_TIMEOUT,
    ).stdout  # fmt: skip
    return sum(p.nar_size for p in parse_path_info(out).values())


class StoreKeeper:
    """Lets builds run side by side, and collects garbage when the last one ends."""

    def __init__(self, limit: int | None) -> None:
        """``limit``: bytes (NIXERY_STORE_LIMIT); None leaves the store alone, as local mode
        does by default since its store is usually the machine's own."""
        self.limit = limit
        self._changed = threading.Condition()
        self._builds = 0
        self._collecting = False

    @contextmanager
    def build(self) -> Iterator[None]:
        """Holds a collection off while the block runs (and waits for one under way)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._collecting)
            self._builds += 1
        try:
            yield
        finally:
            with self._changed:
                self._builds -= 1
                collect = self.limit is not None and self._builds == 0
                self._collecting = collect
            if collect:
                try:
                    self._collect()
                finally:
                    with self._changed:
                        self._collecting = False
                        self._changed.notify_all()

    def _collect(self) -> None:
        assert self.limit is not None
        try:
            size = store_size()
            if size <= self.limit:
                return
            excess = size - int(self.limit * LOW_WATER)
            out = subprocess.run(
                ["nix-store", "--gc", "--max-freed", str(excess)],
                capture_output=True, text=True, check=True, timeout=_COMMAND_TIMEOUT,
            )  # fmt: skip
            after = store_size()
        except (OSError, subprocess.SubprocessError) as e:
            # The build is done and published; a store left large is the next build's to fix.
            log.warning("nix store: collecting garbage failed: %s", e)
            return
        freed = re.findall(r"^.*freed.*$", out.stdout + out.stderr, re.MULTILINE)
        log.info(
            "nix store: %d MB, over its %d MB limit; %s; now %d MB",
            size // 10**6, self.limit // 10**6, " ".join(freed) or "nothing freed",
            after // 10**6,
            extra={"store_bytes": after, "store_limit": self.limit},
        )  # fmt: skip
