"""Real registries for tests and benchmarks: `nixery serve` subprocesses building with real Nix,
and the paths and settings they share."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo-pkgs"
NIXERY = Path(sys.executable).parent / "nixery"

OCI = "application/vnd.oci.image.manifest.v1+json"

# What would let an installed package use the repository's files instead of its own.
REPOSITORY_LEAKS = ("PYTHONPATH", "PYTHONHOME", "WEB_DIR", "NIXERY_PREPARE_IMAGE")

# The demo set has no binary cache; without this Nix tries cache.nixos.org on every build.
NIX_CONFIG = "substituters =\nbuild-users-group =\n"
# The host files the demo set imports, which a restricted evaluation may then read, and the
# set itself for the tests' sets that import it.
DEMO_EVAL_ALLOW = ":".join([
    "/usr/bin", "/usr/local/bin", "/bin",
    "/etc/ssl/certs/ca-certificates.crt", "/etc/services", "/etc/protocols", str(DEMO),
])  # fmt: skip


def demo_plus(dest: Path, scripts: Mapping[str, str]) -> Path:
    """The demo set plus a package per name, built by its script (busybox's sh, with `$out`
    and `${demo.busybox}` as in Nix)."""
    dest.mkdir(parents=True, exist_ok=True)
    packages = "".join(
        f"{name} = derivation {{\n"
        f'  name = "{name}-1.0"; inherit system; builder = "${{demo.busybox}}/bin/sh";\n'
        f'  args = [ "-c" {json.dumps(script)} ]; }};\n'
        for name, script in scripts.items()
    )
    (dest / "default.nix").write_text(
        "{ system ? builtins.currentSystem, ... }:\n"
        f"let demo = import {DEMO} {{ inherit system; }}; in\n"
        f"demo // {{\n{packages}}}\n"
    )
    return dest


def big_set(dest: Path, parts: int, part_mib: int) -> Path:
    """The demo set plus `big`: `parts` files of random bytes, new on every run (a nonce),
    which take seconds to archive and upload."""
    script = (
        "mkdir $out; for i in " + " ".join(str(i) for i in range(parts)) + "; do "
        f"${{demo.busybox}}/bin/dd if=/dev/urandom of=$out/part$i bs=1048576 count={part_mib} "
        f"2>/dev/null; done; echo {uuid.uuid4().hex} > $out/nonce"
    )
    return demo_plus(dest, {"big": script})


def git(repo: Path, *args: str) -> str:
    """Runs git in ``repo`` as a test's committer; its stdout, stripped."""
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Test", "-c", "user.email=test@example.org",
         *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A `nixery serve` process on 127.0.0.1, with its log kept in a file."""

    def __init__(self, storage: Path, **env: str) -> None:
        self.storage = storage
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = storage.parent / f"{storage.name}-{self.port}.log"
        self.env = {
            **os.environ,
            "NIX_CONFIG": NIX_CONFIG,
            "NIXERY_EVAL_ALLOW": DEMO_EVAL_ALLOW,
            "STORAGE_PATH": str(storage),
            "PORT": str(self.port),
            **env,
        }
        if not any(k in env for k in ("NIXERY_PKGS_REPO", "NIXERY_CHANNEL")):
            self.env.setdefault("NIXERY_PKGS_PATH", str(DEMO))
        self.proc: subprocess.Popen[bytes] | None = None
        self.nixery = NIXERY  # another installation's command may be tested
        self.cwd: Path | None = None

    def start(self) -> Registry:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.nixery), "serve"],
                env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nixery serve exited:\n{self.log()}")
            try:
                # 401: a private registry answers, asking for credentials.
                if requests.get(self.url + "/v2/", timeout=1).status_code in (200, 401):
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"nixery serve did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def builds_started(self) -> int:
        return self.log().count(": starting ")

    def get(self, path: str, method: str = "GET", **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 300)
        kwargs.setdefault("allow_redirects", False)
        return requests.request(method, self.url + path, **kwargs)


def pull_concurrently(reg: Registry, name: str, count: int) -> list[requests.Response]:
    """The OCI manifest of `name`, asked for by `count` clients at once."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: reg.get(f"/v2/{name}/manifests/latest",
                                               headers={"Accept": OCI}), range(count)))  # fmt: skip


# Two platforms. Nix builds the demo set's aarch64-linux derivations with the host's x86_64
# busybox: such images test the index and the clients' choice of platform, not arm64 binaries.
MULTI_PLATFORM = {
    "NIXERY_PLATFORMS": "x86_64-linux,aarch64-linux",
    "NIX_CONFIG": NIX_CONFIG + "extra-platforms = aarch64-linux\n",
}
