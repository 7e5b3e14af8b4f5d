"""Store path names, parsed once: ``/nix/store/<hash>-<name>-<version>``.

The pipeline keys popularity data by name without the hash; the SBOM and the build pages
show a name and a version. Both read the name here, by Nix's own rule.
"""

from __future__ import annotations


def store_name(path: str) -> str:
    """``/nix/store/<hash>-glibc-2.40`` -> ``glibc-2.40``: the key of popularity data."""
    base = path.rsplit("/", 1)[-1]
    return base.split("-", 1)[1] if "-" in base else base


def parse_store_name(path: str) -> tuple[str, str]:
    """(name, version) from a store path's name, split as Nix's parseDrvName does: at the
    first dash not followed by a letter."""
    name = store_name(path)
    for i, char in enumerate(name[:-1]):
        if char == "-" and not name[i + 1].isalpha():
            return name[:i], name[i + 1 :]
    return name, ""
