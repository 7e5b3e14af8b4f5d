"""Where the Nix package set comes from, and which exact version of it an image tag means.

Every request is pinned to an exact revision before anything is built, so that the build cache
can be keyed on it and two requests for the same tag never mix two versions of the set.
Looking a tag up costs I/O, so answers are kept for a short time (``caches.Memo``); a tag that
does not exist is an answer too ("not found"), while a source that cannot be reached raises
``SourceUnavailable`` and is asked again next time. One module per kind: ``path``, ``git``,
``channel``.
"""

from __future__ import annotations

from nixery.config import SourceSettings
from nixery.ports import Source
from nixery.sources import channel, git, path
from nixery.sources.channel import ChannelSource
from nixery.sources.git import GitSource
from nixery.sources.path import PathSource


def open_source(settings: SourceSettings) -> Source:
    """The source the settings name (``config.source_settings`` allows only one); with none,
    the nixos-unstable channel. Without a configured TTL each kind keeps its own default,
    which reflects how costly its lookups are."""
    ttl = settings.revision_ttl
    if settings.pkgs_path:
        return PathSource(
            settings.pkgs_path,
            ttl=path.DEFAULT_TTL if ttl is None else ttl,
            flakes=settings.flakes,
        )
    if settings.pkgs_repo:
        return GitSource(
            settings.pkgs_repo,
            settings.cache_dir,
            ttl=git.DEFAULT_TTL if ttl is None else ttl,
            keep=settings.keep_checkouts,
            busy=settings.checkout_busy,
            trusted_refs=settings.trusted_refs or git.TRUSTED_REFS,
            trusted_commits=settings.trusted_commits,
            flakes=settings.flakes,
        )
    return ChannelSource(
        settings.channel or "nixos-unstable",
        settings.cache_dir,
        channel_url=settings.channel_url,
        archive_url=settings.archive_url,
        ttl=channel.DEFAULT_TTL if ttl is None else ttl,
        keep=settings.keep_checkouts,
        busy=settings.checkout_busy,
        repo_url=settings.channel_repo or channel.CHANNEL_REPO,
        trusted_refs=settings.trusted_refs or channel.TRUSTED_REFS,
        trusted_commits=settings.trusted_commits,
    )
