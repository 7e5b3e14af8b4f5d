"""Store paths as Nix describes them: the closure graph's nodes and what the package set's
meta says of them, read from Nix's JSON once for the pipeline, the SBOM and popularity.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nixery.errors import BuildFailed

# Nix's base-32 alphabet (no e, o, u, t); its digits are little-endian.
_NIX32 = "0123456789abcdfghijklnpqrsvwxyz"


@dataclass(frozen=True)
class StorePath:
    """One node of the runtime closure graph."""

    path: str
    references: tuple[str, ...]
    nar_size: int
    nar_hash: str


@dataclass(frozen=True)
class PackageMeta:
    """What the package set says of a store path (its derivation's name and ``meta``)."""

    pname: str
    version: str
    description: str = ""
    homepage: str = ""
    licenses: tuple[tuple[str, str], ...] = ()  # ("id", SPDX id) or ("name", free text)


def parse_meta(entries: Iterable[Mapping[str, Any]]) -> dict[str, PackageMeta]:
    """The plan's ``meta`` list, keyed by store path; the first entry of a path wins."""
    meta: dict[str, PackageMeta] = {}
    for e in entries:
        licenses = tuple(
            (kind, str(value))
            for lic in e.get("licenses", ())
            for kind, value in sorted(lic.items())
            if kind in ("id", "name") and value
        )
        meta.setdefault(
            str(e["path"]),
            PackageMeta(
                str(e["pname"]), str(e["version"]), str(e["description"]),
                str(e["homepage"]), licenses,
            ),
        )  # fmt: skip
    return meta


def parse_path_info(text: str) -> dict[str, StorePath]:
    """Reads ``nix path-info --json``: a list up to Nix 2.18, an object keyed by path since."""
    data = json.loads(text)
    items: Iterable[tuple[str, Mapping[str, Any]]] = (
        ((entry["path"], entry) for entry in data) if isinstance(data, list) else data.items()
    )
    closure = {}
    for path, info in items:
        if info is None:
            raise BuildFailed(f"store path {path} is not valid")
        refs = tuple(sorted(r for r in info.get("references", ()) if r != path))
        closure[path] = StorePath(path, refs, int(info["narSize"]), str(info["narHash"]))
    return closure


def nar_hash_hex(nar_hash: str) -> str:
    """The hex SHA-256 of a NAR hash as Nix prints it: ``sha256:<base-32>`` up to Nix 2.18,
    ``sha256-<base64>`` (SRI) since; CycloneDX wants hex."""
    if nar_hash.startswith("sha256-"):
        return base64.b64decode(nar_hash.removeprefix("sha256-")).hex()
    algorithm, _, text = nar_hash.partition(":")
    if algorithm != "sha256":
        raise ValueError(f"not a SHA-256 NAR hash: {nar_hash!r}")
    if len(text) == 64:
        return bytes.fromhex(text).hex()
    value = 0
    for char in text:  # the first character holds the highest bits
        value = value * 32 + _NIX32.index(char)
    return value.to_bytes(32, "little").hex()


def sri(nar_hash: str) -> str:
    """A NAR hash in the one spelling every Nix reads and flake.lock uses (``sha256-<base64>``),
    so that every Nix gives the same SBOM and the same locked reference."""
    return sri_of_hex(nar_hash_hex(nar_hash))


def sri_of_hex(nar_hex: str) -> str:
    return "sha256-" + base64.b64encode(bytes.fromhex(nar_hex)).decode()
