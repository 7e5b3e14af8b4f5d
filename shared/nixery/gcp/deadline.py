"""Calls to Google Cloud with a deadline of our own, and their failures as transient errors.

The client libraries retry an unavailable service for up to a minute or more per call, and
some calls (a transaction's commit, a stream's read) take no timeout at all, so a request
could hang for minutes before an error that became a 500. Each call here runs on a small
pool and is given up after ``seconds``: the request is answered 503 with Retry-After at
once, while the abandoned call ends on its own (the pool bounds how many can be stuck). An
error that says the service is unavailable becomes the given ``Transient`` kind; any other
error is the caller's to handle (a conflict, a failed precondition) or a bug.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import requests
from google.api_core import exceptions
from google.auth.exceptions import TransportError

from nixery.errors import Transient

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

# What a request to a service may wait for one of its answers (NIXERY_BACKEND_TIMEOUT).
BACKEND_TIMEOUT = 10.0

# Errors that say the service could not answer now, whatever was asked.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    exceptions.ServiceUnavailable,
    exceptions.InternalServerError,
    exceptions.BadGateway,
    exceptions.GatewayTimeout,
    exceptions.DeadlineExceeded,
    exceptions.TooManyRequests,
    exceptions.ResourceExhausted,
    exceptions.Aborted,  # a contended transaction, given up by the library
    exceptions.RetryError,
    requests.ConnectionError,
    requests.Timeout,
    TransportError,
    ConnectionError,
    TimeoutError,
)


class Deadline:
    """Runs one service's calls, each for at most ``seconds``."""

    def __init__(
        self, service: str, error: type[Transient], seconds: float, threads: int = 32
    ) -> None:
        self.service = service
        self.error = error
        self.seconds = seconds
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, f"{service}-call")

    def call(self, function: Callable[[], T]) -> T:
        future = self._pool.submit(function)
        with self.translated():
            try:
                return future.result(timeout=self.seconds)
            except concurrent.futures.TimeoutError:
                future.cancel()  # if it is still queued behind stuck calls, it never runs
                raise self.error(
                    f"{self.service} did not answer within {self.seconds:g}s"
                ) from None

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """The service's unavailability as this deadline's error, for calls that the client
        library itself bounds (a stream of writes, where a thread per call would cost more
        than the call)."""
        try:
            yield
        except UNAVAILABLE as e:
            # The library's text goes to the log alone: it may hold a URL that grants access
            # (a resumable upload's), and the message may reach clients.
            log.warning("%s is unavailable: %s", self.service, e)
            raise self.error(f"{self.service} is unavailable") from e


class HasDeadline(Protocol):
    deadline: Deadline


S = TypeVar("S", bound=HasDeadline)


def bounded(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Runs a method of an adapter under the adapter's ``deadline``."""

    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.deadline.call(lambda: method(self, *args, **kwargs))

    call.__doc__ = method.__doc__
    return call
