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
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
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


# What a flake's evaluation errors must not show a client: a hash Nix computed of what it
# fetched (a wrong narHash makes Nix name the right one: an oracle for any file it can read)
# and a path on the host (a URL's too).
_HASH = re.compile(
    r"\b(?:md5|sha1|sha256|sha512)[-:][A-Za-z0-9+/]+(?:=|%3D)*|(?<=')[0-9a-z]{32,}(?=')"
)
# A store path's hash is one of its content's, too: its name stays (``-source/flake.nix:3:1``).
_STORE_HASH = re.compile(r"(?<=/nix/store/)[0-9a-z]{32}(?=-)")
_HOST_PATH = re.compile(
    r"(?<![\w.:/-])(?:(?:[a-z]+\+)?(?:file|path):)?/+(?!nix/store/)[^\s'\"?,;]+"
)
HASH = "<hash>"
HOST_PATH = "<host path>"


def scrub(lines: list[str]) -> list[str]:
    """Nix's lines for a client of a flake's evaluation: no hash, no host path."""
    return [
        _HOST_PATH.sub(HOST_PATH, _STORE_HASH.sub(HASH, _HASH.sub(HASH, line))) for line in lines
    ]


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


def read_lock(checkout: Path, nar_hash: str, allowed: Sequence[Path] = ()) -> FlakeLock:
    """The locked inputs, as ``flake.lock`` names them (every node but the root), each
    refused if it reads a host path outside ``allowed`` (``check_local``)."""
    try:
        data = json.loads((checkout / LOCK_FILE).read_text())
        nodes: Mapping[str, Any] = data["nodes"]
        root = data["root"]
        locked = {name: node["locked"] for name, node in sorted(nodes.items())
                  if name != root and "locked" in node}  # fmt: skip
        for name, pinned in locked.items():
            check_local(name, pinned, allowed)
        inputs = tuple(
            FlakeInput(name, input_url(pinned), str(pinned.get("narHash", "")))
            for name, pinned in locked.items()
        )
    except FileNotFoundError:
        inputs = ()  # a flake without inputs needs no lock
    except OSError as e:  # its message names the server's path: the log keeps it
        log.error("cannot read %s: %s", checkout / LOCK_FILE, e)
        raise BuildFailed(f"{LOCK_FILE} cannot be read: {os_cause(e)}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BuildFailed(f"{LOCK_FILE} cannot be read: {e}") from e
    return FlakeLock(nar_hash, inputs)


def local_path(locked: Mapping[str, Any]) -> str | None:
    """The host path a locked input reads, if any: a ``path`` input, a ``path`` attribute, or
    a ``file:`` URL (``git+file:``, ``tarball+file:``...), or a URL that is a bare path."""
    if "path" in locked or locked.get("type") == "path":
        return str(locked.get("path", ""))
    if "url" not in locked:
        return None
    url = str(locked["url"])
    scheme, _, rest = url.partition(":")
    if not rest or "/" in scheme or scheme.startswith("."):  # a bare path
        return url
    if scheme.rpartition("+")[2].lower() == "file":
        return urllib.parse.unquote(urllib.parse.urlsplit(rest).path or rest)
    return None


def check_local(name: str, locked: Mapping[str, Any], allowed: Sequence[Path]) -> None:
    """Refuses an input that reads a host path outside the directories the operator allows
    (NIXERY_EVAL_ALLOW): Nix would copy any file the registry can read into the store, and
    its hash check names the file's hash. A relative path stays inside the flake's source;
    ``..`` and a symbolic link leading out are refused."""
    path = local_path(locked)
    if path is None:
        return
    parts = Path(path).parts
    if ".." not in parts and path and not path.startswith("/") and locked.get("type") == "path":
        return
    real = os.path.realpath(path)
    if ".." not in parts and path.startswith("/"):
        for root in map(os.path.realpath, allowed):
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return
    log.warning("refused the flake input %r: it reads %r", name, path)
    raise BuildFailed(
        f"{LOCK_FILE} pins the input {name} to a path on the registry's machine, which is "
        "not one of those it allows (NIXERY_EVAL_ALLOW)"
    )


# What of a locked input's attributes says which revision it is, and nothing secret.
_KEPT = frozenset({"rev", "ref", "dir", "submodules", "shallow", "allRefs"})


def input_url(locked: Mapping[str, Any]) -> str:
    """A locked input as a flake reference URL, without credentials (nor any query but the
    revision's keys, which could hold them): ``github:o/r/<rev>``,
    ``git+<url>?ref=...&rev=...``, ``path:<path>``, ``tarball+<url>``."""
    kind = str(locked["type"])
    if kind in ("github", "gitlab", "sourcehut"):
        host = f"?host={locked['host']}" if "host" in locked else ""
        return f"{kind}:{locked['owner']}/{locked['repo']}/{locked.get('rev', '')}{host}"
    if kind == "path":
        return f"path:{locked['path']}"
    if kind == "indirect":
        return f"flake:{locked['id']}"
    query = urllib.parse.urlencode(sorted((k, str(v)) for k, v in locked.items() if k in _KEPT))
    # The URL's own query and fragment may carry a token (``?access_token=``): left out.
    url = urllib.parse.urlsplit(public_url(str(locked["url"])))._replace(query="", fragment="")
    return f"{kind}+{url.geturl()}" + (f"?{query}" if query else "")
