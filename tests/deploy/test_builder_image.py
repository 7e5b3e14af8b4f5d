"""Google Cloud mode with the builder run as its image: the Dockerfile built here with podman
(base image made from Debian's archive), Nix 2.26 inside, pulled through by a real client."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from tests.helpers.clients import podman_env
from tests.helpers.emulators import ContainerBuilderRegistry
from tests.helpers.registries import OCI

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def container_registry(emulators, builder_image, tmp_path_factory):
    reg = ContainerBuilderRegistry(tmp_path_factory.mktemp("container"), emulators, builder_image)
    reg.start()
    yield reg
    reg.stop()


def test_the_image_has_a_current_nix_and_an_installed_package(builder_image):
    out = subprocess.run(
        ["podman", "run", "--rm", builder_image, "sh", "-c",
         "nix --version; /venv/bin/python -c 'import nixery; print(nixery.__file__)';"
         "id -u; stat -c %U /nix/store /nix/var/nix"],
        env={**os.environ, **podman_env()}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "nix (Nix) 2.26" in out
    assert "/site-packages/nixery/" in out, "installed, not editable"
    assert out.split()[-3:] == ["1000", "nixery", "nixery"], "Nix runs unprivileged, owning /nix"


@pytest.mark.parametrize("confined", [False, True])
def test_the_builder_knows_whether_its_builds_are_sandboxed(builder_image, confined):
    """Under podman's defaults (/proc partly masked) Nix cannot make its sandbox and quietly
    builds without it; with /proc unmasked it can. The probe the builder runs at start tells
    the two apart, by a build that fails where it sees the machine."""
    unconfined = ["--security-opt", "unmask=ALL", "--security-opt", "seccomp=unconfined"]
    out = subprocess.run(
        ["podman", "run", "--rm", *(unconfined if confined else []), builder_image,
         "/venv/bin/python", "-c",
         "from nixery.nix.runner import builds_are_sandboxed as b; print(b())"],
        env={**os.environ, **podman_env()}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == str(confined)


def test_a_pull_is_served_by_the_containers_nix(container_registry, registry, clients, tmp_path):
    copied = clients.copy(container_registry.host, "shell/hello", tmp_path / "img")
    assert copied.returncode == 0, copied.stderr + container_registry.builder_log.read_text()
    for blob in (tmp_path / "img" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    log = container_registry.builder_log.read_text()
    assert "building with Nix 2.26" in log and ": starting " in log
    assert "builds run WITHOUT Nix's sandbox" in log, "podman's defaults allow none"
    # Nix 2.26 in the image and Nix 2.8 on the host give the same store paths, so the same
    # image: path-info's JSON is read in both shapes.
    via_container = container_registry.get(
        "/v2/shell/hello/manifests/latest", headers={"Accept": OCI}
    )
    via_host = registry.get("/v2/shell/hello/manifests/latest", headers={"Accept": OCI})
    digest = via_host.headers["Docker-Content-Digest"]
    assert via_container.headers["Docker-Content-Digest"] == digest
    # And the same SBOM, though Nix 2.26 prints NAR hashes in another form.
    index = [r.get(f"/v2/shell/hello/referrers/{digest}") for r in (container_registry, registry)]
    assert index[0].status_code == 200 and index[0].json()["manifests"]
    assert index[0].content == index[1].content


@pytest.mark.parametrize(
    ("name", "args", "code", "says"),
    [
        ("python3/python3packages.requests", ["-c", "import requests"], 0, ""),
        ("python3/python3packages.requests", ["-c", "import numpy"], 1,
         "ModuleNotFoundError: No module named 'numpy'"),
        ("python3packages.requests/python3packages.numpy", ["-c", "import numpy, requests"], 0,
         ""),
        ("perlpackages.json", ["-MJSON", "-e", "1"], 0, ""),
        ("perlpackages.json", ["-MTry::Tiny", "-e", "1"], 2, "Can't locate Try/Tiny.pm"),
        # No interpreter's module, though its set holds interpreters: plain, with either Nix.
        ("pkgsalt.hello", ["hello", "--version"], 0, ""),
        ("python3packages.black", [], 0, ""),  # runs black, its own program
    ],
)  # fmt: skip
def test_environments_built_by_the_containers_nix_import_their_packages(
    container_registry, registry, clients, name, args, code, says
):
    """Nix 2.26 evaluates the environments as the host's Nix 2.8 does: the same image."""
    clients.trust(container_registry.host)
    ran = clients.podman("run", "--rm", f"{container_registry.host}/{name}", *args)
    assert ran.returncode == code, ran.stderr + container_registry.builder_log.read_text()[-2000:]
    assert says in ran.stderr
    digests = [
        r.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})
        for r in (container_registry, registry)
    ]
    assert (
        digests[0].headers["Docker-Content-Digest"] == digests[1].headers["Docker-Content-Digest"]
    )


@pytest.mark.parametrize("name", ["hello", "nonroot/shell", "hello/glibclocales", "busybox"])
def test_the_contracts_images_from_the_containers_nix_are_the_hosts(
    container_registry, registry, name
):
    """The same digests as the host's Nix gives, so the contract's tests
    (tests/e2e/test_image_contract.py) hold for the builder image's images too."""
    digests = [
        r.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI}).headers
        for r in (container_registry, registry)
    ]
    assert digests[0]["Docker-Content-Digest"] == digests[1]["Docker-Content-Digest"], name


def test_two_pythons_are_a_422_from_the_containers_nix_too(container_registry):
    name = "python312packages.six/python3packages.requests"
    response = container_registry.get(f"/v2/{name}/manifests/latest")
    assert response.status_code == 422, response.text
    assert "python3-3.12.0" in response.text and "python3-3.11.5" in response.text


@pytest.fixture(scope="module")
def bounded_registry(emulators, builder_image, tmp_path_factory):
    reg = ContainerBuilderRegistry(
        tmp_path_factory.mktemp("bounded"), emulators, builder_image, NIXERY_STORE_LIMIT="1M"
    )
    reg.start()
    yield reg
    reg.stop()


def store_bytes(reg: ContainerBuilderRegistry) -> int:
    out = subprocess.run(
        ["podman", "exec", reg.container, "nix", "--extra-experimental-features", "nix-command",
         "path-info", "--all", "--json"],
        env={**os.environ, **podman_env()}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(info["narSize"] for info in json.loads(out).values() if info)


def test_the_store_is_collected_down_to_its_limit_between_builds(bounded_registry):
    """With NIXERY_STORE_LIMIT far below one image's closure, every build ends with a
    collection (the outputs are roots only while their image is made), and the next build,
    whose paths were collected, builds them again."""
    log = bounded_registry.builder_log
    for collections, name in enumerate(("shell/hello", "git", "shell/hello/jq"), 1):
        found = bounded_registry.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})
        assert found.status_code == 200, found.text + log.read_text()
        # The image is published first; the collection follows.
        deadline = time.monotonic() + 60
        while log.read_text().count("over its 1 MB limit") < collections:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert store_bytes(bounded_registry) <= 1 << 20
