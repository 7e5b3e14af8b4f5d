"""The builder container's Nix store and memory, for bench/builder_store.py.

    podman exec -i CONTAINER /venv/bin/python - < bench/lib/store_probe.py

Runs inside the builder image, fed on standard input (the image holds no bench code), and
prints one JSON line: the store's bytes on disk (`du` of /nix/store), the sum of its paths'
NAR sizes (what NIXERY_STORE_LIMIT counts), its number of paths, and the RSS summed and the
largest peak RSS of the gunicorn processes. Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def store() -> dict[str, int]:
    du = subprocess.run(["du", "-sb", "/nix/store"], capture_output=True, text=True).stdout
    info = json.loads(subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--all", "--json"],
        capture_output=True, text=True,
    ).stdout)  # fmt: skip
    # Newer Nix prints an object keyed by store path, older Nix a list.
    entries = info.values() if isinstance(info, dict) else info
    nar = sum(e["narSize"] for e in entries if e)
    return {"du": int(du.split()[0]), "nar": nar, "paths": len(info)}


def gunicorn_memory() -> dict[str, int]:
    rss = hwm = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"gunicorn" in cmd:
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss += int(fields["VmRSS"].split()[0]) * 1024
            hwm = max(hwm, int(fields["VmHWM"].split()[0]) * 1024)
    return {"rss": rss, "peak": hwm}


if __name__ == "__main__":
    print(json.dumps({**store(), **gunicorn_memory()}))
