import json

from nixery.manifests import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    LayerBlob,
    image_config,
    image_manifests,
    preferred_type,
    sha256_digest,
)

LAYERS = [
    LayerBlob("sha256:" + "1" * 64, "sha256:" + "2" * 64, 10),
    LayerBlob("sha256:" + "3" * 64, "sha256:" + "4" * 64, 20),
]


RUNTIME = {"Env": ["PATH=/bin"], "Cmd": ["bash"]}


def test_config_is_canonical_and_reproducible():
    a = image_config("amd64", LAYERS, RUNTIME)
    assert a == image_config("amd64", LAYERS, dict(reversed(RUNTIME.items())))
    config = json.loads(a)
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in LAYERS]
    assert config["config"] == RUNTIME


def test_both_formats_reference_the_same_config_and_layers():
    config = image_config("arm64", LAYERS, {})
    oci, docker = image_manifests(config, LAYERS)
    assert (oci.media_type, docker.media_type) == (OCI_MANIFEST, DOCKER_MANIFEST)
    assert oci.digest != docker.digest
    for manifest in (oci, docker):
        body = json.loads(manifest.body)
        assert body["mediaType"] == manifest.media_type
        assert body["config"]["digest"] == sha256_digest(config)
        assert [layer["digest"] for layer in body["layers"]] == [x.digest for x in LAYERS]
        assert manifest.digest == sha256_digest(manifest.body)


def test_accept_negotiation():
    assert preferred_type([OCI_MANIFEST, DOCKER_MANIFEST]) == OCI_MANIFEST
    assert preferred_type([f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"]) == OCI_MANIFEST
    assert preferred_type([DOCKER_MANIFEST]) == DOCKER_MANIFEST
    assert preferred_type([]) == DOCKER_MANIFEST
    assert preferred_type(["*/*"]) == DOCKER_MANIFEST
    assert preferred_type([f"{OCI_MANIFEST};q=0, {DOCKER_MANIFEST}"]) == DOCKER_MANIFEST
    assert preferred_type([f"{OCI_MANIFEST}; q=0.5"]) == OCI_MANIFEST
