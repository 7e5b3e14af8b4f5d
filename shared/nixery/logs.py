"""Logging: readable lines locally, JSON that Cloud Logging understands on Google Cloud."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

# Attributes every LogRecord has; anything else was passed in `extra` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


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


def setup(level: str = "INFO", json_format: bool | None = None) -> None:
    """JSON when running on Cloud Run or Functions (K_SERVICE is set there), else text."""
    if json_format is None:
        json_format = "K_SERVICE" in os.environ
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_format
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
