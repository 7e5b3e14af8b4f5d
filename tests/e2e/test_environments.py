"""Language environments on real images, in both modes: a name's packages of an interpreter's
set become one environment made by the set's own ``withPackages``, whose interpreter (the
demo set's stand-ins answer imports as the real ones do) sees them all, and no others."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile

import pytest

from tests.e2e.test_runtime_images import config_of
from tests.helpers.registries import NIXERY, REPO

pytestmark = pytest.mark.e2e

# The commit this feature was built on: images that hold no nested set's package are built
# by it and by this checkout, and must come out byte for byte the same.
BEFORE = "16aa580"


@pytest.fixture(scope="module", params=["local", "gcp"])
def target(request, clients):
    reg = request.getfixturevalue({"local": "registry", "gcp": "gcp_registry"}[request.param])
    clients.trust(reg.host)
    return reg


def run(clients, image: str, *args: str) -> subprocess.CompletedProcess[str]:
    return clients.podman("run", "--rm", image, *args)


def test_python_environment_imports_the_names_packages_and_no_others(target, clients):
    for name in ("python3/python3packages.requests", "python3packages.requests"):
        image = f"{target.host}/{name}"
        assert config_of(target, name)["Entrypoint"] == ["/bin/python3"], name
        ok = run(clients, image, "-c", "import requests; import certifi, urllib3")
        assert ok.returncode == 0, ok.stderr
        missing = run(clients, image, "-c", "import numpy")
        assert missing.returncode == 1
        assert "ModuleNotFoundError: No module named 'numpy'" in missing.stderr
    both = f"{target.host}/python3packages.requests/python3packages.numpy"
    ok = run(clients, both, "-c", "import requests, numpy")
    assert ok.returncode == 0, ok.stderr


def test_perl_environment_loads_the_names_modules_and_no_others(target, clients):
    image = f"{target.host}/perlpackages.json"
    assert config_of(target, "perlpackages.json")["Entrypoint"] == ["/bin/perl"]
    ok = run(clients, image, "-MJSON", "-MURI", "-e", "1")  # URI: JSON's dependency
    assert ok.returncode == 0, ok.stderr
    missing = run(clients, image, "-MTry::Tiny", "-e", "1")
    assert missing.returncode == 2
    assert "Can't locate Try/Tiny.pm in @INC" in missing.stderr


def test_a_shell_beside_an_environment_runs_its_interpreter_from_path(target, clients):
    image = f"{target.host}/shell/python3/python3packages.numpy"
    ran = run(clients, image, "bash", "-c", "python3 -c 'import numpy' && readlink /bin/python3")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().endswith("-env/bin/python3")


def test_a_bare_interpreter_sees_no_set_packages(target, clients):
    ran = run(clients, f"{target.host}/python3", "-c", "import requests")
    assert ran.returncode == 1
    assert "No module named 'requests'" in ran.stderr


def test_two_interpreters_of_one_language_are_a_422_naming_both(target):
    name = "python312packages.six/python3packages.requests"
    response = target.get(f"/v2/{name}/manifests/latest")
    assert response.status_code == 422, response.text
    message = response.json()["errors"][0]["message"]
    for part in ("python312packages.six", "python3packages.requests",
                 "python3-3.12.0", "python3-3.11.5"):  # fmt: skip
        assert part in message, message


def _built_digest(registry, tmp_path, name: str, code: list[str], env: dict[str, str]) -> str:
    out = tmp_path / f"{len(list(tmp_path.iterdir()))}.tar"
    env = {k: v for k, v in registry.env.items() if k not in ("STORAGE_PATH", "PORT")} | env
    built = subprocess.run([*code, "build", name, "-o", str(out)], env=env, capture_output=True,
                           text=True, timeout=600, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    match = re.search(r"manifest (sha256:[0-9a-f]{64})", built.stderr)
    assert match, built.stderr
    with tarfile.open(out):  # a readable archive
        pass
    return match.group(1)


def test_images_without_a_nested_sets_package_keep_their_bytes(registry, tmp_path):
    """Built by the commit before environments and by this one, from the same package set:
    the same manifest digest, so the same config and layers."""
    old = tmp_path / "before"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE, "shared"],
                             capture_output=True, check=True)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    before = [os.fspath(NIXERY.parent / "python"), "-c",
              "import sys; from nixery.cli import main; sys.exit(main())"]  # fmt: skip
    builds = tmp_path / "builds"
    builds.mkdir()
    for name in ("hello", "jq", "python3", "shell/git"):
        was = _built_digest(registry, builds, name, before, {"PYTHONPATH": str(old / "shared")})
        now = _built_digest(registry, builds, name, [str(NIXERY)], {})
        assert now == was, name
