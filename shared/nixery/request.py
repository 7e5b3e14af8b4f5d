"""Image names -> image requests, and the grammars of everything a client names.

The protocol layer parses a request's name and reference here, once: the rest of the code
takes an ``ImageRequest`` and a ``Tag`` or ``Digest``, never raw strings. A name like
``shell/git/htop`` lists packages; ``shell``, ``nonroot`` and ``arm64`` are meta-packages
that ask for a shell, a non-root user and an architecture rather than a package. Registry
names must match the OCI repository grammar, which is lower case only, so the real attribute
names (``bashInteractive``, ``python3Packages``) are recovered later by Nix,
case-insensitively, from the package set.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NewType

from nixery.errors import InvalidDigest, InvalidName, InvalidTag

# OCI distribution spec, "Pulling manifests": <name> and <reference> grammars.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

# Docker refuses repository names longer than this; a request for more packages than
# MAX_PACKAGES is more likely abuse than an image anyone needs.
MAX_NAME_LENGTH = 255
MAX_PACKAGES = 64

ALWAYS_INCLUDED = ("cacert", "iana-etc")
SHELL_PACKAGES = ("bashInteractive", "coreutils", "moreutils", "nano")
_RULE_PACKAGES = frozenset((*ALWAYS_INCLUDED, *SHELL_PACKAGES))
# The user a `nonroot` image runs as (``pipeline.image_root`` makes it, ``pipeline.runtime``
# runs as it).
USER, UID, HOME = "nixery", 1000, "/home/nixery"


@dataclass(frozen=True)
class Architecture:
    nix_system: str
    oci_arch: str
    variant: str | None = None  # the OCI platform's variant, as an index names it


AMD64 = Architecture("x86_64-linux", "amd64")
ARM64 = Architecture("aarch64-linux", "arm64", "v8")
ARCHITECTURES = (AMD64, ARM64)


def architecture(nix_system: str) -> Architecture | None:
    return next((a for a in ARCHITECTURES if a.nix_system == nix_system), None)


@dataclass(frozen=True)
class ImageRequest:
    """What an image name asks for: a sorted set of package attribute paths and a target."""

    packages: tuple[str, ...]
    arch: Architecture
    nonroot: bool = False  # the image runs as an unprivileged user (``USER``)
    # More than one: an image per platform under an index, ``arch`` (the first) for clients
    # that take no index. Empty: ``arch``'s image alone.
    platforms: tuple[Architecture, ...] = ()
    # Those of ``ALWAYS_INCLUDED`` and ``SHELL_PACKAGES`` that the name lists itself: a flake
    # may lack the others (``optional``), never these.
    asked: tuple[str, ...] = ()

    @property
    def optional(self) -> tuple[str, ...]:
        """The packages only the rules added: an image from a flake that lacks them goes
        without, and its build page says so."""
        return tuple(p for p in self.packages if p in _RULE_PACKAGES and p not in self.asked)


def _fix_segment(segment: str) -> str:
    # Nix attribute names cannot start with a digit: nixpkgs spells `1password` `_1password`.
    return "_" + segment if segment[0].isdigit() else segment


def parse_name(
    name: str, max_packages: int = MAX_PACKAGES, platforms: Sequence[Architecture] = (AMD64,)
) -> ImageRequest:
    """Turns a repository name into the request it stands for, or raises NAME_INVALID;
    ``max_packages`` is the registry's own limit (NIXERY_MAX_PACKAGES), at most ours;
    ``platforms`` the registry's (NIXERY_PLATFORMS), its default first, unless the name
    says ``arm64``."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"repository name longer than {MAX_NAME_LENGTH} characters")
    if not NAME_RE.fullmatch(name):
        raise InvalidName(
            "invalid repository name: components are lower-case letters and digits, "
            "separated by '.', '_', '__' or '-'",
            {"name": name},
        )
    arch = None
    nonroot = False
    packages: set[str] = set(ALWAYS_INCLUDED)
    named: set[str] = set()
    for component in name.split("/"):
        if component == "shell":
            packages.update(SHELL_PACKAGES)
        elif component == "arm64":
            arch = ARM64
        elif component == "nonroot":
            nonroot = True
        else:
            named.add(".".join(_fix_segment(s) for s in component.split(".")))
    packages |= named
    asked = tuple(sorted(named & _RULE_PACKAGES))
    if len(packages) > min(max_packages, MAX_PACKAGES):
        raise InvalidName(
            f"an image may hold at most {min(max_packages, MAX_PACKAGES)} packages here "
            f"(this name asks for {len(packages)}, with those every image holds)"
        )
    if arch is not None:
        return ImageRequest(tuple(sorted(packages)), arch, nonroot, asked=asked)
    several = tuple(platforms) if len(platforms) > 1 else ()
    return ImageRequest(tuple(sorted(packages)), platforms[0], nonroot, several, asked)


Digest = NewType("Digest", str)
"""A well-formed ``sha256:<64 hex>`` digest: the only algorithm used here."""

DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True)
class Tag:
    name: str


def suggest(missing: str, attributes: Sequence[str], count: int = 3) -> list[str]:
    """The attribute names a missing package name may have meant: the same name in a nested
    set (``requests``: ``python3Packages.requests``), then names spelled alike."""
    wanted = missing.lower()
    by_lower = {a.lower(): a for a in attributes}
    nested = [a for a in attributes if a.lower().rsplit(".", 1)[-1] == wanted and "." in a]
    alike = difflib.get_close_matches(wanted, list(by_lower), n=count, cutoff=0.75)
    found = dict.fromkeys([*nested, *(by_lower[a] for a in alike)])
    return list(found)[:count]


def parse_digest(digest: str) -> Digest:
    if not DIGEST_RE.fullmatch(digest):
        raise InvalidDigest("invalid or unsupported digest", {"digest": digest[:200]})
    return Digest(digest)


def parse_reference(reference: str) -> Tag | Digest:
    """A manifest reference: a digest if it has the algorithm's colon, else a tag."""
    if ":" in reference:
        return parse_digest(reference)
    if not TAG_RE.fullmatch(reference):
        raise InvalidTag("invalid tag", {"tag": reference[:200]})
    return Tag(reference)
