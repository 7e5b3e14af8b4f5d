"""Running git for the sources: never prompting, never leaking a URL's credentials."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import IO

from nixery.errors import SourceUnavailable, os_cause
from nixery.sources.checkouts import CHECKOUTS

log = logging.getLogger(__name__)


def run_git(*args: str | Path, timeout: float, stdout: IO[bytes] | None = None) -> str:
    """Runs git without ever prompting (a server has nobody to answer); failures, including
    a remote that cannot be reached, become SourceUnavailable. Returns stdout unless
    redirected."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    # A commits-only history repository must never fetch what it lacks behind our back.
    env["GIT_NO_LAZY_FETCH"] = "1"
    try:
        result = subprocess.run(
            ["git", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            timeout=timeout,
            check=False,
        )
    # Messages leave out the command line: it holds the URL, which may carry credentials.
    except subprocess.TimeoutExpired as e:
        raise SourceUnavailable(f"git timed out after {timeout:g}s") from e
    except OSError as e:
        raise SourceUnavailable(f"cannot run git: {os_cause(e)}") from e
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip()
        log.warning("git failed: %r", said)
        # Its message names the directories it was given, the checkouts' (NIXERY_CACHE_DIR):
        # never shown to clients.
        paths = {str(p) for a in args if isinstance(a, Path) for p in (a, a.resolve())}
        for path in sorted(paths, key=len, reverse=True):
            said = said.replace(path, CHECKOUTS)
        raise SourceUnavailable(f"git: {said}")
    return "" if stdout is not None else result.stdout.decode()
