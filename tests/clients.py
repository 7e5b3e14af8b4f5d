"""Real registry clients (skopeo, podman, containerd) configured to run as root in a scratch
directory."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class Clients:
    def __init__(self, root: Path, registry: str) -> None:
        self.registry = registry
        root.mkdir(parents=True, exist_ok=True)
        storage = root / "storage.conf"
        storage.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
        )
        containers = root / "containers.conf"
        containers.write_text(
            "[containers]\n"
            'netns = "host"\ncgroupns = "host"\n'
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{root}/events.log"\nruntime = "runc"\n'
            f'tmp_dir = "{root}/tmp"\nimage_copy_tmp_dir = "{root}/copytmp"\n'
        )
        (root / "copytmp").mkdir(exist_ok=True)
        self._registries = root / "registries.conf"
        self._registries.write_text("")
        self.trust(registry)
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(containers),
            "CONTAINERS_REGISTRIES_CONF": str(self._registries),
            "TMPDIR": str(root / "copytmp"),
        }

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
