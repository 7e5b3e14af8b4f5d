"""The client matrix: real registry clients pull from a real local registry, check every
digest, and (where there is a runtime) run what they pulled.

skopeo (inspect; copy to oci: and docker-archive:), podman (pull by tag and by digest, run),
containerd's ctr (HEAD-then-digest resolution, run) and python-dxf (a Python client that
verifies digests). Their set-up on a machine like CI's is in tests/helpers/clients.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile

import pytest
from dxf import DXF

from tests.helpers.protocol import DOCKER, OCI

pytestmark = pytest.mark.e2e

IMAGES = ["shell/hello", "htop"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def served(registry, name: str, accept: str = OCI) -> tuple[str, dict]:
    """The digest and manifest the registry serves for `name:latest` with this Accept."""
    response = registry.get(f"/v2/{name}/manifests/latest", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"], response.json()


# skopeo


@pytest.mark.parametrize("name", IMAGES)
def test_skopeo_inspect_sees_the_served_digest_and_tags(registry, clients, name):
    result = clients.skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/{name}")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    digest, _ = served(registry, name)
    assert info["Digest"] == digest
    assert info["RepoTags"] == ["latest"]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    raw = clients.skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{name}"
    )
    assert raw.returncode == 0, raw.stderr
    assert sha256(raw.stdout.encode()) == digest


@pytest.mark.parametrize("name", IMAGES)
def test_skopeo_copies_to_an_oci_layout_and_every_blob_verifies(registry, clients, tmp_path, name):
    result = clients.skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/{name}",
        f"oci:{tmp_path}/img:latest",
    )
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "img" / "index.json").read_text())
    digest, manifest = served(registry, name)
    assert index["manifests"][0]["digest"] == digest
    blobs = tmp_path / "img" / "blobs" / "sha256"
    for descriptor in [manifest["config"], *manifest["layers"]]:
        data = (blobs / descriptor["digest"].partition(":")[2]).read_bytes()
        assert sha256(data) == descriptor["digest"] and len(data) == descriptor["size"]


def test_skopeo_copies_to_a_docker_archive(registry, clients, tmp_path):
    archive = tmp_path / "hello.tar"
    result = clients.skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/shell/hello",
        f"docker-archive:{archive}:shell/hello:latest",
    )
    assert result.returncode == 0, result.stderr
    _, manifest = served(registry, "shell/hello", DOCKER)
    config_digest = manifest["config"]["digest"]
    with tarfile.open(archive) as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
        assert any(tag.endswith("shell/hello:latest") for tag in entry["RepoTags"])
        config = tar.extractfile(entry["Config"]).read()
        assert sha256(config) == config_digest
        # docker-archive holds the uncompressed layers: their digests are the diff_ids.
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        assert len(entry["Layers"]) == len(diff_ids) == len(manifest["layers"])
        for layer, diff_id in zip(entry["Layers"], diff_ids, strict=True):
            assert sha256(tar.extractfile(layer).read()) == diff_id


# podman


def test_podman_pulls_by_tag_and_by_digest_and_runs(registry, clients):
    digest, _ = served(registry, "shell/hello")
    pulled = clients.podman("pull", f"{registry.host}/shell/hello")
    assert pulled.returncode == 0, pulled.stderr
    inspected = clients.podman(
        "image", "inspect", "--format", "{{.Digest}}", f"{registry.host}/shell/hello"
    )
    assert inspected.stdout.strip() == digest
    by_digest = clients.podman("pull", f"{registry.host}/shell/hello@{digest}")
    assert by_digest.returncode == 0, by_digest.stderr
    ran = clients.podman("run", "--rm", f"{registry.host}/shell/hello@{digest}", "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "Hello, world!"


def test_podman_runs_a_second_image(registry, clients):
    ran = clients.podman("run", "--rm", f"{registry.host}/htop", "htop")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("htop ")


# containerd


def test_ctr_resolves_with_head_then_pulls_by_digest_and_runs(registry, containerd):
    image = f"{registry.host}/shell/hello:latest"
    digest, _ = served(registry, "shell/hello", "application/vnd.oci.image.index.v1+json, " + OCI)
    pulled = containerd.ctr("image", "pull", "--plain-http", image)
    assert pulled.returncode == 0, pulled.stderr
    listed = containerd.ctr("image", "ls")
    assert image in listed.stdout and digest in listed.stdout, listed.stdout
    log = registry.log()
    head = log.rfind("HEAD /v2/shell/hello/manifests/latest 200")
    assert head >= 0, "containerd resolves the tag with HEAD"
    assert log.find(f"GET /v2/shell/hello/manifests/{digest} 200", head) > head
    ran = containerd.ctr("run", "--rm", image, f"hello-{os.getpid()}", "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "Hello, world!"


# python-dxf


@pytest.mark.parametrize("name", IMAGES)
def test_python_dxf_pulls_and_verifies_every_digest(registry, name):
    client = DXF(registry.host, name, insecure=True)
    _, ping = client.api_version_check()
    assert ping.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert client.list_aliases(batch_size=1) == ["latest"]  # paged through Link headers
    head_digest, _ = client.head_manifest_and_response("latest")
    manifest, response = client.get_manifest_and_response("latest")
    assert response.headers["Docker-Content-Digest"] == head_digest == sha256(manifest.encode())
    # get_alias checks the manifest against Docker-Content-Digest; pull_blob checks each blob.
    layers = client.get_alias("latest", sizes=True)
    config = json.loads(manifest)["config"]
    for digest, size in [(config["digest"], config["size"]), *layers]:
        data = b"".join(client.pull_blob(digest))
        assert len(data) == size and sha256(data) == digest
    assert client.get_digest("latest") == config["digest"]


# What a failed build looks like in each client's terminal: what failed and the build's page.

FAILURES = {
    "nosuchpkg": "unknown packages: nosuchpkg",
    "broken": "broken is broken on purpose",
    "slow": "timed out after 3 seconds",  # the session registry's NIX_TIMEOUT
}


def build_url_in(registry, text: str) -> str:
    """The build page a client printed, checked to answer with that build's page."""
    match = re.search(re.escape(registry.url) + r"/builds/[0-9a-f]{64}", text)
    assert match, text
    page = registry.get(match[0].removeprefix(registry.url))
    assert page.status_code == 200 and "failed" in page.text
    return match[0]


@pytest.mark.parametrize("name", FAILURES)
def test_skopeo_shows_why_a_build_failed_and_its_page(registry, clients, name):
    result = clients.skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/{name}")
    assert result.returncode != 0
    assert FAILURES[name] in result.stderr, result.stderr
    build_url_in(registry, result.stderr)


@pytest.mark.parametrize("name", FAILURES)
def test_podman_shows_why_a_build_failed_and_its_page(registry, clients, name):
    result = clients.podman("pull", f"{registry.host}/{name}")
    assert result.returncode != 0
    assert FAILURES[name] in result.stderr, result.stderr
    build_url_in(registry, result.stderr)


@pytest.mark.parametrize("name", FAILURES)
def test_ctr_shows_why_a_build_failed_and_its_page(registry, containerd, name):
    """containerd resolves with HEAD, which has no body: the status line carries it."""
    result = containerd.ctr("image", "pull", "--plain-http", f"{registry.host}/{name}:latest")
    assert result.returncode != 0
    assert FAILURES[name] in result.stderr, result.stderr
    build_url_in(registry, result.stderr)


def test_the_pull_commands_on_a_build_page_work(registry, clients, containerd, tmp_path):
    served(registry, "shell/hello")
    builds = registry.get("/api/v1/registry").json()["builds"]
    key = next(b["key"] for b in builds if b["name"] == "shell/hello")
    lines = registry.get(f"/api/v1/builds/{key}").json()["pull"]
    pull = {line.split()[0]: line.split()[1:] for line in lines}
    skopeo = [*pull["skopeo"][:-1], f"oci:{tmp_path}/image:latest"]  # into the test's directory
    for result in (
        clients.podman(*pull["podman"]),
        containerd.ctr(*pull["ctr"]),
        clients.skopeo(*skopeo),
    ):
        assert result.returncode == 0, result.stderr
