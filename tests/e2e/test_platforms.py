"""Multi-platform images (NIXERY_PLATFORMS=x86_64-linux,aarch64-linux), in both modes.

Nix builds the demo set's aarch64-linux derivations with the host's x86_64 busybox
(``extra-platforms = aarch64-linux``, conftest's MULTI_PLATFORM): the arm64 images hold x86_64
binaries, so these tests check the index and each client's choice of platform, not that
anything runs on arm64.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.helpers.protocol import DOCKER, DOCKER_LIST, OCI, OCI_INDEX
from tests.helpers.registries import MULTI_PLATFORM, Registry

pytestmark = pytest.mark.e2e

IMAGE = "shell/hello"
ARCHES = {"amd64": None, "arm64": "v8"}  # architecture -> variant, in NIXERY_PLATFORMS order


@pytest.fixture(scope="module", params=["local", "gcp"])
def multi(request, clients):
    name = {"local": "multi_registry", "gcp": "gcp_multi_registry"}[request.param]
    reg = request.getfixturevalue(name)
    clients.trust(reg.host)
    return reg


def get(reg, reference: str, *accept: str, name: str = IMAGE, method: str = "GET"):
    headers = {"Accept": ", ".join(accept)} if accept else {}
    response = reg.get(f"/v2/{name}/manifests/{reference}", method, headers=headers)
    assert response.status_code == 200, response.text
    return response


def config_of(reg, manifest: dict) -> dict:
    blob = reg.get(f"/v2/{IMAGE}/blobs/{manifest['config']['digest']}", allow_redirects=True)
    assert blob.status_code == 200
    return json.loads(blob.content)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("index_type", "child_type"), [(OCI_INDEX, OCI), (DOCKER_LIST, DOCKER)])
def test_clients_that_take_an_index_get_one(multi, index_type, child_type):
    response = get(multi, "latest", index_type, child_type)
    assert response.headers["Content-Type"] == index_type
    assert response.headers["Docker-Content-Digest"] == sha256(response.content)
    index = response.json()
    assert (index["schemaVersion"], index["mediaType"]) == (2, index_type)
    platforms = [m["platform"] for m in index["manifests"]]
    assert platforms == [
        {"os": "linux", "architecture": a, **({"variant": v} if v else {})}
        for a, v in ARCHES.items()
    ]
    layers = []
    for entry, arch in zip(index["manifests"], ARCHES, strict=True):
        assert entry["mediaType"] == child_type
        child = get(multi, entry["digest"], child_type)
        assert child.content and len(child.content) == entry["size"]
        assert sha256(child.content) == entry["digest"]
        config = config_of(multi, child.json())
        assert (config["architecture"], config["os"]) == (arch, "linux")
        layers.append({layer["digest"] for layer in child.json()["layers"]})
    assert len({m["digest"] for m in index["manifests"]}) == 2
    by_digest = get(multi, response.headers["Docker-Content-Digest"], DOCKER)
    assert by_digest.content == response.content, "the index is addressable by its digest"
    head = get(multi, "latest", index_type, child_type, method="HEAD")
    assert head.headers["Docker-Content-Digest"] == response.headers["Docker-Content-Digest"]


def test_clients_that_take_no_index_get_the_default_platform(multi):
    for accept, media_type in (((DOCKER,), DOCKER), ((OCI,), OCI), ((), DOCKER)):
        response = get(multi, "latest", *accept)
        assert response.headers["Content-Type"] == media_type
        assert config_of(multi, response.json())["architecture"] == "amd64"


def test_arm64_in_the_name_forces_a_single_aarch64_image(multi):
    response = get(multi, "latest", OCI_INDEX, OCI, name=f"arm64/{IMAGE}")
    assert response.headers["Content-Type"] == OCI
    manifest = response.json()
    blob = multi.get(f"/v2/arm64/{IMAGE}/blobs/{manifest['config']['digest']}",
                     allow_redirects=True)  # fmt: skip
    assert json.loads(blob.content)["architecture"] == "arm64"
    index = get(multi, "latest", OCI_INDEX, OCI).json()
    assert index["manifests"][1]["digest"] == response.headers["Docker-Content-Digest"], (
        "the same image as the index's arm64 one"
    )


def test_the_same_store_path_is_the_same_layer(multi):
    """The demo servicesdb links to an import of /etc/services: the same for both systems."""
    index = get(multi, "latest", OCI_INDEX, OCI, name="servicesdb").json()
    layers = [
        [x["digest"] for x in get(multi, m["digest"], OCI, name="servicesdb").json()["layers"]]
        for m in index["manifests"]
    ]
    assert set(layers[0]) & set(layers[1]), "a layer of the shared store path"
    assert layers[0] != layers[1]


def test_a_platform_that_fails_fails_the_image_and_says_which(multi):
    response = multi.get("/v2/x86only/manifests/latest", headers={"Accept": OCI_INDEX})
    assert response.status_code == 422, response.text
    message = response.json()["errors"][0]["message"]
    assert "aarch64-linux" in message and "x86only does not build" in message


def test_one_build_for_all_platforms(multi):
    before = multi.builds_started()
    get(multi, "latest", OCI_INDEX, OCI, name="htop")
    assert multi.builds_started() == before + 1


def test_skopeo_inspects_the_index_and_copies_each_platform(multi, clients, tmp_path):
    ref = f"docker://{multi.host}/{IMAGE}:latest"
    raw = clients.skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["mediaType"] == OCI_INDEX
    copied = {}
    for arch in ARCHES:
        dest = tmp_path / arch
        done = clients.skopeo("copy", "--override-arch", arch, "--src-tls-verify=false",
                              ref, f"oci:{dest}:x")  # fmt: skip
        assert done.returncode == 0, done.stderr
        index = json.loads((dest / "index.json").read_text())
        digest = index["manifests"][0]["digest"]
        manifest = json.loads((dest / "blobs/sha256" / digest[7:]).read_text())
        config = json.loads((dest / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
        assert config["architecture"] == arch
        copied[arch] = digest
    assert copied["amd64"] != copied["arm64"]


def test_podman_pull_arch_arm64_selects_arm64(multi, clients):
    image = f"{multi.host}/{IMAGE}"
    pulled = clients.podman("pull", "-q", "--arch", "arm64", image)
    assert pulled.returncode == 0, pulled.stderr
    arch = clients.podman("image", "inspect", "--format", "{{.Architecture}}", image)
    assert arch.stdout.strip() == "arm64"
    clients.podman("rmi", "-f", image)


def test_ctr_pull_platform_arm64_selects_arm64(multi, containerd):
    image = f"{multi.host}/{IMAGE}:latest"
    pulled = containerd.ctr("image", "pull", "--plain-http", "--platform", "linux/arm64", image)
    assert pulled.returncode == 0, pulled.stderr
    index = get(multi, "latest", OCI_INDEX, OCI).json()
    arm64 = index["manifests"][1]["digest"]
    assert f"manifest-{arm64}" in pulled.stdout or arm64 in pulled.stdout, pulled.stdout
    assert index["manifests"][0]["digest"] not in pulled.stdout
    containerd.ctr("image", "rm", image)


def test_index_and_manifests_are_byte_identical_across_fresh_builds(multi, tmp_path):
    fresh = Registry(tmp_path / "fresh", NIX_TIMEOUT="3", **MULTI_PLATFORM).start()
    try:
        for name in ("jq", IMAGE):
            for accept in ((OCI_INDEX, OCI), (DOCKER_LIST, DOCKER)):
                a, b = (
                    get(multi, "latest", *accept, name=name),
                    get(fresh, "latest", *accept, name=name),
                )
                assert a.content == b.content
                for entry in a.json()["manifests"]:
                    child = entry["mediaType"]
                    assert get(multi, entry["digest"], child, name=name).content == (
                        get(fresh, entry["digest"], child, name=name).content
                    )
    finally:
        fresh.stop()


def test_the_build_page_lists_the_index(multi):
    index = get(multi, "latest", OCI_INDEX, OCI)
    builds = multi.get("/api/v1/registry").json()["builds"]
    [build] = [b for b in builds if b["name"] == IMAGE]
    manifests = multi.get(f"/api/v1/builds/{build['key']}").json()["manifests"]
    assert manifests[OCI_INDEX] == index.headers["Docker-Content-Digest"]
    assert DOCKER_LIST in manifests
    page = multi.get(f"/builds/{build['key']}")
    assert index.headers["Docker-Content-Digest"] in page.text
    pulls = multi.get(f"/api/v1/builds/{build['key']}").json()["pull"]
    assert pulls and all(index.headers["Docker-Content-Digest"] in p for p in pulls), (
        "pulled by the index's digest, so that each client picks its platform"
    )


def test_each_platforms_manifest_has_its_own_sbom(multi):
    """The SBOM describes one closure, so each platform's manifest is the subject of its own
    (the index, which names manifests rather than store paths, of none)."""
    index = get(multi, "latest", OCI_INDEX, OCI).json()
    sboms = []
    for entry in index["manifests"]:
        referrers = multi.get(f"/v2/{IMAGE}/referrers/{entry['digest']}").json()["manifests"]
        (sbom,) = [r for r in referrers if r["artifactType"] == "application/vnd.cyclonedx+json"]
        artifact = get(multi, sbom["digest"], OCI).json()
        assert artifact["subject"]["digest"] == entry["digest"]
        sboms.append(artifact["layers"][0]["digest"])
    assert len(set(sboms)) == 2, "the platforms' closures differ, and so do their SBOMs"
