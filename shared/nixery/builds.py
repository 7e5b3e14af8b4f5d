"""Build coordination: how a manifest request gets its image built, exactly once per key.

Local mode runs builds on a thread pool in the registry's own process; Google Cloud mode
enqueues a task for the builder service. Either way the state store holds the outcome; the
queue answers it as soon as it is known, or ``None`` when the caller's patience runs out.
The one policy both modes share, how long a failure is remembered, is here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .job import BuildJob
from .state import Failure, Published


def never() -> bool:
    return False


class BuildQueue(Protocol):
    def build(
        self, job: BuildJob, wait: float, gone: Callable[[], bool] = never
    ) -> Published | Failure | None:
        """Starts the job unless a build of its key runs already, then waits for it.

        Returns the outcome once the build has finished, or None when ``wait`` seconds pass
        first or ``gone()`` says the client hung up; the build goes on either way. A
        transient failure raises ``Transient``.
        """
        ...

    def running(self, key: str) -> bool:
        """Whether this queue knows a build of the key to be under way (joining it is free)."""
        ...


def remembered(failure: Failure, now: float, ttl: float) -> bool:
    """Whether a failure still answers requests, or is old enough to try the build again."""
    return now - failure.at < ttl
