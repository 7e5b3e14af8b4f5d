"""Logging: readable lines locally, JSON that Cloud Logging understands on Google Cloud.

Log lines carry what strangers send (paths, user names, tags), and a reader of the log must be
able to trust that a line which looks like a record is one: in the text format, a record is
one line, its message's control characters escaped (``\\n``, ``\\x1b``...) and its
backslashes doubled (so that a path holding a backslash and an ``n`` reads otherwise than one
holding a line break), and the lines of a traceback after it are indented. JSON escapes them
by itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any

# Attributes every LogRecord has; anything else was passed in `extra` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


# What ends a line for some reader of a log (Python's splitlines, a terminal), or moves or
# hides text on a terminal: C0 and C1 controls, DEL, Unicode's line and paragraph separators,
# the bidirectional marks and overrides that reorder what is shown; and the backslash, which
# starts the escapes.
_UNSAFE = re.compile(
    r"[\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def escape(text: str) -> str:
    """``text`` on one line, its control characters and backslashes written as Python writes
    them."""
    return _UNSAFE.sub(lambda match: repr(match.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """One line per record; a traceback's lines follow it, indented."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            **{k: v for k, v in vars(record).items() if k not in _STANDARD},
        }
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class BuildLog(logging.LoggerAdapter[logging.Logger]):
    """One build's lines: ``build <short key>: ...`` to read, the whole key as a field
    (``build_key``) to search for in JSON logs."""

    def __init__(self, logger: logging.Logger, key: str) -> None:
        super().__init__(logger)
        self.key = key

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {"build_key": self.key, **kwargs.get("extra", {})}
        return f"build {self.key[:12]}: {msg}", kwargs


class Tally:
    """Events (refusals) counted per key and logged as one line per key, at most every
    ``every`` seconds by ``clock``: a flood refused thousands of times a second, a line each,
    would cost more than refusing it. The lines are written with the first event after
    ``every`` seconds, or by ``flush_tallies`` (the local server's maintenance, every
    second), so that the last counts of a flood that stops are written too. ``line`` formats
    the key, the count and the seconds counted; ``field`` names the key in JSON logs."""

    def __init__(
        self, logger: logging.Logger, line: str, field: str, every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._log, self._line, self._field, self._every = logger, line, field, every
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._since = clock()
        self._lock = threading.Lock()
        _TALLIES.add(self)

    def count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1
        self.flush()

    def flush(self) -> None:
        """Writes the counts if ``every`` seconds have passed since the last lines."""
        with self._lock:
            now = self._clock()
            if not self._counts or now - self._since < self._every:
                return
            counts, self._counts = self._counts, Counter()
            since, self._since = self._since, now
        for key, count in counts.most_common():
            self._log.warning(self._line, key, count, now - since,
                              extra={self._field: key, "refused": count})  # fmt: skip


_TALLIES: weakref.WeakSet[Tally] = weakref.WeakSet()


def flush_tallies() -> None:
    """Writes every tally's counts that are due (``Tally.flush``)."""
    for tally in list(_TALLIES):
        tally.flush()


def setup(level: str = "INFO", json_format: bool | None = None) -> None:
    """JSON when running on Cloud Run or Functions (K_SERVICE is set there), else text."""
    if json_format is None:
        json_format = "K_SERVICE" in os.environ
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
