#!/usr/bin/env python3
"""Builds the registry function's source archive, exactly as Cloud Functions receives it.

    scripts/package-function.py [OUTPUT]      (default: dist/registry-function.zip)

The archive holds functions/registry/ at its root (main.py, requirements.txt) and a copy of
shared/ as ``shared/`` beside them, which requirements.txt installs, not editable, with the
``gcp`` extra. Build leftovers are left out. The archive is deterministic: entries sorted,
timestamps fixed, permissions normalised, so the same source gives the same bytes and a
redeploy happens only when something changed. Standard library only.
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUNCTION = REPO / "functions" / "registry"
SHARED = REPO / "shared"
LEFTOVERS = {"build", "dist", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def _files(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(p in LEFTOVERS or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file() and path.suffix not in (".pyc", ".pyo"):
            yield prefix + "/".join(parts), path


def package(out: Path) -> None:
    entries = dict(_files(FUNCTION, ""))
    entries.update(_files(SHARED, "shared/"))
    web, nix = "shared/nixery/http/static/style.css", "shared/nixery/prepare-image/default.nix"
    page = "shared/nixery/http/templates/front.html"
    for need in ("main.py", "requirements.txt", "shared/pyproject.toml", web, page, nix):
        if need not in entries:
            sys.exit(f"package-function: {need} is missing")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in sorted(entries):
            path = entries[name]
            info = zipfile.ZipInfo(name, EPOCH)
            info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    partial.replace(out)
    print(f"{out}: {len(entries)} files, {out.stat().st_size} bytes")


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    package(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist" / "registry-function.zip")
