"""The build queue: how a manifest request gets an image built, exactly once per key.

Local mode runs builds on a thread pool in the registry's own process; Google Cloud mode
enqueues a task for the builder service. Either way the state store holds the outcome, and
the queue only answers whether the build finished within the caller's patience.
"""

from __future__ import annotations

from typing import Protocol

from .builder import BuildJob


class BuildQueue(Protocol):
    def build(self, job: BuildJob, wait: float) -> bool:
        """Starts the job unless a build of its key runs already, then waits for it.

        Returns True once the build has finished (its outcome is in the state store), False
        when ``wait`` seconds pass first; the build goes on either way.
        """
