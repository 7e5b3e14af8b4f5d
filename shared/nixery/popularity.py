"""Popularity data: how many derivations reference each store name, for layering.

Nixery's format: a JSON object mapping a store name without its hash (``glibc-2.40``) to a
count. Without data, every path is equally unpopular and layering still works, less well.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


def load_popularity(location: str | None, timeout: float = 30.0) -> dict[str, int]:
    """Reads ``NIX_POPULARITY_URL`` (an http(s) URL or a path); ``{}`` if absent or unusable."""
    if not location:
        log.warning("no popularity data (NIX_POPULARITY_URL unset): layering uses sizes only")
        return {}
    try:
        if location.startswith(("http://", "https://")):
            with urllib.request.urlopen(location, timeout=timeout) as response:
                data = json.load(response)
        else:
            data = json.loads(Path(location).read_text())
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise ValueError("it must map store names to counts")
    except (OSError, ValueError) as e:
        # A registry without popularity data still serves correct images: do not refuse to start.
        log.warning("popularity data unusable (%s: %s): layering uses sizes only", location, e)
        return {}
    log.info("loaded popularity data for %d store names from %s", len(data), location)
    return data
