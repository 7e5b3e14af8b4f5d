"""Real registry clients (skopeo, podman, containerd) configured to run as root in a scratch
directory."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def podman_env(root: Path | None = None) -> dict[str, str]:
    """podman's settings for a storage of our own: var/containers, or ``root``, as
    scripts/podman-env.sh writes them (the builder image is built with the same)."""
    extra = {"NIXERY_CONTAINERS": str(root)} if root else {}
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "podman-env.sh")],
        env={**os.environ, **extra}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())


class Clients:
    def __init__(self, root: Path, registry: str) -> None:
        self.registry = registry
        self.env = {**os.environ, **podman_env(root)}
        self._registries = Path(self.env["CONTAINERS_REGISTRIES_CONF"])
        self.trust(registry)

    def trust(self, host: str) -> None:
        """Lets podman use plain HTTP with another registry on this machine."""
        with self._registries.open("a") as f:
            f.write(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def skopeo(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("skopeo", *args)

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("podman", *args)

    def copy(self, host: str, name: str, dest: Path) -> subprocess.CompletedProcess[str]:
        """skopeo copies ``host/name`` (plain HTTP) into an OCI layout at ``dest``, checking
        every blob against its digest on the way."""
        self.trust(host)
        return self.skopeo(
            "copy", "--src-tls-verify=false", f"docker://{host}/{name}", f"oci:{dest}:latest"
        )


class Containerd:
    """A private containerd (its root, state and sockets in a scratch directory), driven by
    `ctr`. The CRI plugin is disabled: it needs a CNI setup and is not what pulls images."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.socket = root / "containerd.sock"
        config = root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{root}/root"\nstate = "{root}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\naddress = "{self.socket}"\n'
            f'[ttrpc]\naddress = "{root}/containerd-ttrpc.sock"\n'
            f'[debug]\naddress = "{root}/debug.sock"\n'
        )
        self.log_path = root / "containerd.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while self.ctr("version").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
