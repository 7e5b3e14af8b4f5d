"""The image root: what makes a pile of store paths look like a filesystem.

Built here from the packages' output trees rather than by a Nix derivation, so that it needs
nothing from the package set (no ``symlinkJoin``), works the same for every target
architecture, and costs no build: the requested packages' top-level directories are merged
into one tree of symlinks into the store, as ``symlinkJoin`` would (the first package in
request order wins a collision). Our own files are placed first, so they win over packages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from nixery.pipeline.archives import Entry
from nixery.request import HOME, UID, USER

# Nix-specific metadata directories, not part of what a package installs.
_SKIPPED = {"nix-support"}
# Directories whose mode is not the default 0755.
_MODES = {"tmp": 0o1777, "root": 0o700}

PASSWD = (
    b"root:x:0:0:System administrator:/root:/bin/sh\n"
    b"nobody:x:65534:65534:Unprivileged account:/var/empty:/bin/false\n"
)
GROUP = b"root:x:0:\nnogroup:x:65534:\n"

# The user of a `nonroot` image. Its shadow entries are locked (`!`): nobody logs in as any of
# them, and what runs in the image runs as this one, from its home.
USER_PASSWD = f"{USER}:x:{UID}:{UID}:Nixery user:{HOME}:/bin/sh\n".encode()
USER_GROUP = f"{USER}:x:{UID}:\n".encode()
SHADOW = b"".join(f"{u}:!:1::::::\n".encode() for u in ("root", "nobody", USER))

_Tree = dict[str, "Entry | _Tree"]


def _merge(tree: _Tree, source: str, prefix: str) -> None:
    for name in sorted(os.listdir(source)):
        if not prefix and name in _SKIPPED:
            continue
        path = os.path.join(source, name)
        existing = tree.get(name)
        if os.path.isdir(path) and not os.path.islink(path):
            if existing is None:
                tree[name] = existing = {}
            if isinstance(existing, dict):
                _merge(existing, path, prefix + name + "/")
        elif existing is None:
            tree[name] = Entry(prefix + name, "symlink", target=path)


def image_root(outputs: Sequence[str], nonroot: bool = False) -> list[Entry]:
    """Entries of the root layer for the given package outputs, in request order; with
    ``nonroot``, the user ``USER`` and its home too."""
    tree: _Tree = {
        "tmp": {},
        "root": {},
        "etc": {
            "passwd": Entry("etc/passwd", "file", 0o644, data=PASSWD),
            "group": Entry("etc/group", "file", 0o644, data=GROUP),
        },
    }
    if nonroot:
        tree["etc"] = {
            "passwd": Entry("etc/passwd", "file", 0o644, data=PASSWD + USER_PASSWD),
            "group": Entry("etc/group", "file", 0o644, data=GROUP + USER_GROUP),
            "shadow": Entry("etc/shadow", "file", 0o600, data=SHADOW),
        }
        home = HOME.strip("/")
        tree["home"] = {USER: Entry(home, "dir", 0o755, owner=UID)}
    for out in outputs:
        if os.path.isdir(out):
            _merge(tree, out, "")
    bin_dir = tree.get("bin")
    env = bin_dir.get("env") if isinstance(bin_dir, dict) else None
    if isinstance(env, Entry):
        # /usr/bin/env is what `#!/usr/bin/env` scripts need; point it at the image's own env.
        usr = tree.setdefault("usr", {})
        usr_bin = usr.setdefault("bin", {}) if isinstance(usr, dict) else None
        if isinstance(usr_bin, dict):
            usr_bin.setdefault("env", Entry("usr/bin/env", "symlink", target=env.target))
    return list(_flatten(tree, ""))


def _flatten(tree: _Tree, prefix: str) -> list[Entry]:
    entries = []
    for name, node in tree.items():
        if isinstance(node, dict):
            path = prefix + name
            entries.append(Entry(path, "dir", _MODES.get(path, 0o755)))
            entries += _flatten(node, path + "/")
        else:
            entries.append(node)
    return entries
