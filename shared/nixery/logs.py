"""Logging: readable lines locally, JSON that Cloud Logging understands on Google Cloud."""

from __future__ import annotations

import json
import logging
import os
import sys

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
