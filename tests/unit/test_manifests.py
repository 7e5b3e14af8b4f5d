import json

from nixery.oci.manifests import (
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


def test_index_negotiation_pairs_the_index_with_the_preferred_format():
    from nixery.oci.manifests import DOCKER_LIST, OCI_INDEX, preferred_index_type

    assert preferred_index_type([OCI_MANIFEST, OCI_INDEX, DOCKER_LIST]) == OCI_INDEX
    assert preferred_index_type([DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX]) == DOCKER_LIST
    assert preferred_index_type([f"{DOCKER_MANIFEST}, {OCI_INDEX}"]) == OCI_INDEX
    assert preferred_index_type([OCI_MANIFEST, DOCKER_MANIFEST, "*/*"]) is None
    assert preferred_index_type([f"{OCI_INDEX};q=0", OCI_MANIFEST]) is None


def test_indexes_are_canonical_and_name_each_platform():
    from nixery.oci.manifests import DOCKER_LIST, OCI_INDEX, image_index
    from nixery.request import AMD64, ARM64

    amd64 = image_manifests(image_config("amd64", LAYERS, {}), LAYERS)
    arm64 = image_manifests(image_config("arm64", LAYERS, {}), LAYERS)
    oci, docker = image_index([(AMD64, amd64), (ARM64, arm64)])
    assert oci == image_index([(AMD64, amd64), (ARM64, arm64)])[0], "reproducible"
    assert (oci.media_type, docker.media_type) == (OCI_INDEX, DOCKER_LIST)
    assert oci.blobs() == [] and oci.children() == [amd64[0].digest, arm64[0].digest]
    assert docker.children() == [amd64[1].digest, arm64[1].digest]
    platforms = [m["platform"] for m in json.loads(oci.body)["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
