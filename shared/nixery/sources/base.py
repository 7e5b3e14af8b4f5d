"""What every package source is: the protocol, exact revisions, and a few shared rules."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import UntrustedRevision

# A nixpkgs or git commit, as a tag names it; both git and channel sources accept these.
COMMIT_RE = re.compile(r"[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class Revision:
    """An exact version of a package set: equal revisions always mean identical trees."""

    source: str
    value: str

    def __str__(self) -> str:
        return f"{self.source}@{self.value}"


@dataclass(frozen=True)
class Untrusted:
    """A tag's answer when it names a commit outside the source's trusted history: kept for
    a while like any answer, so that asking again costs no fetch."""

    commit: str
    why: str


Answer = Revision | Untrusted | None


def trusted(answer: Answer) -> Revision | None:
    """The revision a lookup found, or UntrustedRevision: its code is never evaluated."""
    if isinstance(answer, Untrusted):
        raise UntrustedRevision(
            f"commit {answer.commit} is not trusted: {answer.why}", {"commit": answer.commit}
        )
    return answer


class Source(Protocol):
    """What the registry and the builder need, so that any of the three kinds can be configured."""

    def resolve(self, tag: str) -> Revision | None:
        """The exact revision `tag` names now, or None if there is no such version; a commit
        outside the source's trusted history raises UntrustedRevision."""
        ...

    def checkout(self, revision: Revision) -> Path:
        """A directory holding the set at exactly `revision`, its default.nix at the top."""
        ...

    def tags(self) -> list[str]:
        """The tags worth listing (tags/list): `latest`, and whatever else can be enumerated."""
        ...


def check_source(source: str, revision: Revision) -> None:
    # A revision of another source is a bug in the caller, not trouble with this source.
    if revision.source != source:
        raise ValueError(f"revision {revision} does not come from {source}")


def public_url(url: str) -> str:
    """The URL without credentials, since source ids end up in cache keys and logs."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
