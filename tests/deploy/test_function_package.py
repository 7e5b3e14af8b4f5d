"""The registry function as deployed: scripts/package-function.py's archive, installed by
`pip install -r requirements.txt` into a fresh venv (as the Cloud Functions build does) and
run by that venv's functions-framework against the emulators."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from tests.helpers.emulators import Emulators, GcpRegistry, Process, _ok
from tests.helpers.registries import OCI, REPO, REPOSITORY_LEAKS

pytestmark = pytest.mark.e2e


class PackagedRegistry(GcpRegistry):
    """Only the registry process comes from the archive's venv; the builder is the repository's."""

    def __init__(self, root: Path, emulators: Emulators, app: Path, venv: Path) -> None:
        super().__init__(root, emulators)
        for leak in REPOSITORY_LEAKS:
            self.env.pop(leak, None)
        self.app, self.venv = app, venv

    def start(self) -> PackagedRegistry:
        self.start_builder()
        verbose = {**self.env, "PYTHONVERBOSE": "1"}  # the log says where each module came from
        self.registry = Process("packaged registry function", [
            str(self.venv / "bin" / "functions-framework"), "--target", "registry",
            "--source", str(self.app / "main.py"), "--host", "127.0.0.1", "--port", str(self.port),
        ], self.log_path, verbose)  # fmt: skip
        self.registry.wait_until(lambda: _ok(self.url + "/v2/"))
        return self


def _run(cmd: list[str | Path], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_packaged_function_installs_and_serves(emulators: Emulators, tmp_path: Path):
    archive = tmp_path / "registry-function.zip"
    _run([sys.executable, REPO / "scripts" / "package-function.py", archive], tmp_path)
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"main.py", "requirements.txt", "shared/pyproject.toml"} <= names
    assert not [n for n in names if re.search(r"(^|/)(build|__pycache__)/|\.egg-info/", n)]
    app = tmp_path / "app"
    zipfile.ZipFile(archive).extractall(app)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    _run([venv / "bin" / "pip", "install", "-q", "-r", "requirements.txt"], app)

    reg = PackagedRegistry(tmp_path / "run", emulators, app, venv).start()
    try:
        assert reg.get("/v2/").status_code == 200
        built = reg.get("/v2/shell/hello/manifests/latest", headers={"Accept": OCI})
        assert built.status_code == 200, built.text
        layer = built.json()["layers"][0]
        redirect = reg.get(f"/v2/shell/hello/blobs/{layer['digest']}")
        assert redirect.status_code == 307, redirect.text
        assert "X-Goog-Signature=" in redirect.headers["Location"]
        fetched = requests.get(redirect.headers["Location"], timeout=30)
        assert "sha256:" + hashlib.sha256(fetched.content).hexdigest() == layer["digest"]
        page = reg.get("/")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "docker pull " in page.text and "Recent builds" in page.text
        style = reg.get("/style.css")
        assert (
            style.text == (REPO / "shared" / "nixery" / "http" / "static" / "style.css").read_text()
        )
        purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
        site = _run([venv / "bin" / "python", "-I", "-c", purelib], tmp_path).strip()
        loaded = set(re.findall(r"[^\s'\"]*/nixery/[\w/]+\.py\b", reg.registry.log()))
        assert any(p.endswith("/nixery/gcp/registry_app.py") for p in loaded), loaded
        assert all(p.startswith(site + "/") for p in loaded), loaded
    finally:
        reg.stop()
