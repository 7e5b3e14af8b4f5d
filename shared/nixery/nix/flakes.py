"""Package sets that are flakes: how Nix is asked to read them, and what their lock pins.

A git or path source whose checkout holds ``flake.nix`` is read as a flake, in flakes' pure
evaluation: no environment, no search path, no host file, and inputs only as ``flake.lock``
pins them (``builtins.getFlake`` never updates or writes a lock). Pure evaluation reads
nothing but what a locked reference fetches, so the checkout and ``prepare-image`` first go
into the store (a restricted evaluation, as for a ``default.nix``), and the pure one fetches
both again by their NAR hash: the same store paths, checked. Flakes are experimental on
Nix 2.8 and still on 2.26: they are enabled for these calls alone, on the command line.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixery.errors import BuildFailed, BuildTimedOut, os_cause
from nixery.records import FlakeInput, FlakeLock, FlakeOrigin
from nixery.sources.trust import public_url

FLAKE_FILE = "flake.nix"
LOCK_FILE = "flake.lock"

FLAKES = ("--extra-experimental-features", "nix-command flakes")
# Nothing is built during evaluation (no import from derivation), as for a default.nix.
PURE = (
    *("--option", "pure-eval", "true"),
    *("--option", "allow-import-from-derivation", "false"),
)
# The pure evaluation's entry: prepare-image, fetched by its NAR hash, called with the rest.
ENTRY = (
    "{ prepare, prepareHash, ... }@args: import"
    ' (builtins.fetchTree { type = "path"; path = prepare; narHash = prepareHash; }'
    ' + "/default.nix") (removeAttrs args [ "prepare" "prepareHash" ])'
)
log = logging.getLogger(__name__)

_HOW_TO_LOCK = f"run `nix flake lock` and commit {LOCK_FILE}"
# Nix takes an input's own inputs from the lock alone, without reading its flake.nix again:
# one the lock lacks is left out of the call of its `outputs` (Nix 2.8: "'outputs' at ...
# called without required argument 'x'"; 2.26: "function 'outputs' called without ...").
_UNPINNED_DEEPER = re.compile(r"'outputs'.* called without required argument '([^']+)'")


def is_flake(checkout: Path) -> bool:
    return (checkout / FLAKE_FILE).is_file()


@dataclass(frozen=True)
class LockedFlake:
    """A checkout in the store, as pure evaluation may read it: the flake's store path and
    locked reference, and prepare-image's store path and NAR hash."""

    source: str
    ref: str
    prepare: str
    prepare_hash: str
    lock: FlakeLock


def locked_ref(store_path: str, nar_hash: str, origin: FlakeOrigin) -> str:
    """``path:`` with the NAR hash, which locks it, and the origin's ``rev`` and
    ``lastModified`` (always given: Nix 2.8 and 2.26 would default the latter differently)."""
    query: dict[str, str | int] = {"narHash": nar_hash, "lastModified": origin.last_modified}
    if origin.rev:
        query["rev"] = origin.rev
    return f"path:{store_path}?{urllib.parse.urlencode(query)}"


def check_pinned(has_lock: bool, unpinned: list[str]) -> None:
    """Refuses a flake whose lock does not pin every input it declares: nothing is fetched
    unpinned and no lock is written, so such a flake cannot be built."""
    if not unpinned:
        return
    names = ", ".join(unpinned)
    if not has_lock:
        raise BuildFailed(
            f"the flake has no {LOCK_FILE} to pin its inputs ({names}): {_HOW_TO_LOCK}"
        )
    raise BuildFailed(f"{LOCK_FILE} does not pin the flake's inputs {names}: {_HOW_TO_LOCK}")


def unpinned_deeper(error: BuildFailed) -> BuildFailed:
    """Nix's error for an input of an input that the lock does not pin, as the refusal of an
    unpinned input of the flake's own (which is checked before Nix runs); any other error
    as it is."""
    match = _UNPINNED_DEEPER.search(str(error))
    if match is None or isinstance(error, BuildTimedOut):
        return error
    return BuildFailed(
        f"{LOCK_FILE} does not pin the input {match.group(1)} of one of the flake's inputs: "
        f"{_HOW_TO_LOCK}",
        error.log_tail,
    )


def read_lock(checkout: Path, nar_hash: str) -> FlakeLock:
    """The locked inputs, as ``flake.lock`` names them (every node but the root)."""
    try:
        data = json.loads((checkout / LOCK_FILE).read_text())
        nodes: Mapping[str, Any] = data["nodes"]
        root = data["root"]
        inputs = tuple(
            FlakeInput(name, input_url(node["locked"]), str(node["locked"].get("narHash", "")))
            for name, node in sorted(nodes.items())
            if name != root and "locked" in node
        )
    except FileNotFoundError:
        inputs = ()  # a flake without inputs needs no lock
    except OSError as e:  # its message names the server's path: the log keeps it
        log.error("cannot read %s: %s", checkout / LOCK_FILE, e)
        raise BuildFailed(f"{LOCK_FILE} cannot be read: {os_cause(e)}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BuildFailed(f"{LOCK_FILE} cannot be read: {e}") from e
    return FlakeLock(nar_hash, inputs)


def input_url(locked: Mapping[str, Any]) -> str:
    """A locked input as a flake reference URL, without credentials: ``github:o/r/<rev>``,
    ``git+<url>?ref=...&rev=...``, ``path:<path>``, ``tarball+<url>``."""
    kind = str(locked["type"])
    if kind in ("github", "gitlab", "sourcehut"):
        host = f"?host={locked['host']}" if "host" in locked else ""
        return f"{kind}:{locked['owner']}/{locked['repo']}/{locked.get('rev', '')}{host}"
    if kind == "path":
        return f"path:{locked['path']}"
    if kind == "indirect":
        return f"flake:{locked['id']}"
    skip = {"type", "url", "narHash", "lastModified", "revCount"}
    query = urllib.parse.urlencode(sorted((k, str(v)) for k, v in locked.items() if k not in skip))
    return f"{kind}+{public_url(str(locked['url']))}" + (f"?{query}" if query else "")
