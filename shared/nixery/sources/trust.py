"""What every package source is: the protocol, exact revisions, and a few shared rules."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from nixery.errors import UntrustedRevision
from nixery.records import Revision

# A nixpkgs or git commit, as a tag names it; both git and channel sources accept these.
COMMIT_RE = re.compile(r"[0-9a-fA-F]{40}")


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
