"""Cold build of an image whose layers mostly exist already: time must follow the NEW bytes.

    .venv/bin/python bench/incremental.py [--runs 3]

With a local registry (demo set), BASE is built first; then BASE plus one small package is
requested, and its build is timed (manifest request to response) and compared with the same
image built on empty storage. The registry's own log gives the archive step's time and how
many layers it archived or reused. The Nix store is warm in both cases: this measures the
registry's side, which is what reusing layers can save.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pull import ENV, NIXERY, REPO, free_port

BASE = "shell/git/python3/perl/vim/ripgrep/1password/python3packages.numpy"
EXTRA = "htop"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


class Server:
    def __init__(self, storage: Path) -> None:
        self.port = free_port()
        self.log = storage.with_suffix(".log")
        env = {**ENV, "STORAGE_PATH": str(storage), "PORT": str(self.port),
               "NIXERY_PKGS_PATH": str(REPO / "examples" / "demo-pkgs")}  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([str(NIXERY), "serve"], env=env, stderr=log)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("registry did not start")

    def build(self, image: str) -> float:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/{image}/manifests/latest", headers={"Accept": ACCEPT}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
        return time.perf_counter() - started

    def archive_step(self) -> tuple[float, str]:
        """The last build's archive step: seconds, and its new/reused counts."""
        found = re.findall(r"archives done in ([\d.]+)s (new=\d+ reused=\d+)", self.log.read_text())
        return float(found[-1][0]), found[-1][1]

    def blob_bytes(self, storage: Path) -> int:
        return sum(f.stat().st_size for f in storage.rglob("*") if f.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    image = f"{BASE}/{EXTRA}"
    work = Path(tempfile.mkdtemp(prefix="nixery-incremental-"))
    cold, warm = [], []
    try:
        for run in range(args.runs + 1):  # run 0 builds the Nix store paths: not counted
            server = Server(work / f"cold{run}")
            try:
                total = server.build(image)
                cold.append((total, *server.archive_step()))
                cold_bytes = server.blob_bytes(work / f"cold{run}")
            finally:
                server.stop()
            server = Server(work / f"warm{run}")
            try:
                server.build(BASE)
                before = server.blob_bytes(work / f"warm{run}")
                total = server.build(image)
                warm.append((total, *server.archive_step()))
                new_bytes = server.blob_bytes(work / f"warm{run}") - before
            finally:
                server.stop()
        cold, warm = cold[1:], warm[1:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"image {image} (demo set), {args.runs} runs, medians")
    for label, runs, size in (
        ("empty storage", cold, cold_bytes),
        (f"{BASE} built", warm, new_bytes),
    ):
        print(f"  {label:>60}: build {statistics.median(r[0] for r in runs):.2f} s, "
              f"archives {statistics.median(r[1] for r in runs):.2f} s ({runs[-1][2]}), "
              f"{size / 1e6:.1f} MB stored")  # fmt: skip


if __name__ == "__main__":
    main()
