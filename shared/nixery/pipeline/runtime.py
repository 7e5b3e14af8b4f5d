"""The image's runtime config: whom it runs as, what it runs, and in what environment.

One predictable rule, documented in docs/images.md: an image with a shell (``bash``) runs it
(``Cmd``); otherwise, when the name asks for exactly one package and that package declares a
main program (nixpkgs' ``meta.mainProgram``, read by Nix as data), the image runs it
(``Entrypoint``); a name made only of one interpreter's packages (``python3packages.requests``,
with or without ``python3``) counts as one package, its environment, which runs the
interpreter, unless it is one package that declares a program of its own
(``python3packages.black`` runs black, as it did before environments); otherwise it runs
nothing unless told. A program name that is not a plain
file name, or that the image does not have in ``/bin``, is ignored rather than trusted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from nixery.pipeline.archives import Entry
from nixery.records import Environment
from nixery.request import ALWAYS_INCLUDED, HOME, UID, ImageRequest

PATH = "/bin:/sbin:/usr/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-bundle.crt"
# glibcLocales' archive: Nix's glibc reads LOCALE_ARCHIVE, and without one no UTF-8 locale.
LOCALE_ARCHIVE = "lib/locale/locale-archive"
LOCALE = "C.UTF-8"
_PROGRAM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")


def runtime_config(
    request: ImageRequest,
    root: Sequence[Entry],
    main_programs: Mapping[str, str | None],
    environments: Sequence[Environment] = (),
) -> dict[str, Any]:
    """The ``config`` object of the image config. ``main_programs`` maps each requested
    package to the main program it declares, if any; ``environments`` are those it holds."""
    paths = {e.path for e in root}
    env = [f"PATH={PATH}", f"SSL_CERT_FILE={CA_BUNDLE}"]
    if LOCALE_ARCHIVE in paths:
        env += [f"LANG={LOCALE}", f"LC_ALL={LOCALE}", f"LOCALE_ARCHIVE=/{LOCALE_ARCHIVE}"]
    config: dict[str, Any] = {"Env": env}
    if "bin/bash" in paths:
        config["Cmd"] = ["bash"]
    elif (program := main_program(request, main_programs, environments)) and (
        f"bin/{program}" in paths
    ):
        config["Entrypoint"] = [f"/bin/{program}"]
    if request.nonroot:
        config["User"] = f"{UID}:{UID}"
        config["WorkingDir"] = HOME
    return config


def main_program(
    request: ImageRequest,
    main_programs: Mapping[str, str | None],
    environments: Sequence[Environment] = (),
) -> str | None:
    """The program of the one package the name asks for (or of the one environment that
    holds all it asks for), if it declares a usable one."""
    named = [p for p in request.packages if p not in ALWAYS_INCLUDED]
    holder = next((e for e in environments if named and set(named) <= set(e.members)), None)
    own = main_programs.get(named[0]) if len(named) == 1 else None
    program = own or (holder.program if holder else None)
    return program if program and _PROGRAM.fullmatch(program) else None
