"""The package as a deployment installs it: not editable, into a fresh virtualenv, run from
outside the repository. It must carry its web page and its Nix expressions."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.registries import OCI, REPO, REPOSITORY_LEAKS, Registry

pytestmark = pytest.mark.e2e

WHERE = """import json, nixery, nixery.config as c
dirs = [str(c.package_dir(d)) for d in ("http/static", "prepare-image")]
print(json.dumps([nixery.__file__, *dirs]))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("installed")
    # The copy the Cloud Functions build gets, from the script that makes its archive: pip
    # builds in the source tree (build/), which must not race with other runs nor bring stale
    # files along, and nothing outside shared/ may help.
    archive = root / "function.zip"
    subprocess.run([sys.executable, REPO / "scripts" / "package-function.py", archive], check=True)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(root, [n for n in zipped.namelist() if n.startswith("shared/")])
    shared = root / "shared"
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(shared)], check=True, cwd=root)
    return venv


def test_the_installed_package_is_a_copy_in_site_packages(installed: Path, tmp_path: Path):
    python = installed / "bin" / "python"
    out = subprocess.run(
        [python, "-I", "-c", WHERE], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    site = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert site.startswith(str(installed)) and site.endswith("site-packages")
    module, web, prepare = (Path(p) for p in json.loads(out))
    for path in (module, web, prepare):
        assert path.is_relative_to(site), f"{path} is not in {site}"
    assert (web / "style.css").is_file() and (prepare / "default.nix").is_file()
    assert (web.parent / "templates" / "front.html").is_file()
    dist = next(Path(site).glob("nixery-*.dist-info"))
    direct = json.loads((dist / "direct_url.json").read_text())
    assert not direct.get("dir_info", {}).get("editable"), "installed editable"


def test_the_installed_package_serves_its_page_and_builds(installed: Path, tmp_path: Path):
    reg = Registry(tmp_path / "storage")
    for leak in REPOSITORY_LEAKS:
        reg.env.pop(leak, None)
    reg.nixery = installed / "bin" / "nixery"
    reg.cwd = tmp_path  # outside the repository
    reg.start()
    try:
        page = reg.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["Content-Type"].startswith("text/html")
        assert f"docker pull {reg.host}/" in page.text
        style = reg.get("/style.css")
        assert (
            style.text == (REPO / "shared" / "nixery" / "http" / "static" / "style.css").read_text()
        )
        built = reg.get("/v2/hello/manifests/latest", headers={"Accept": OCI})
        assert built.status_code == 200, built.text + reg.log()
        manifest = built.json()
        assert manifest["mediaType"] == OCI and manifest["layers"], manifest
    finally:
        reg.stop()
