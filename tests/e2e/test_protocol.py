"""The pull side of the OCI distribution spec, and the Docker Registry HTTP API v2 behaviour
that Docker, containerd, podman and skopeo rely on, checked over HTTP one requirement a test.

Written from the specification (github.com/opencontainers/distribution-spec, spec.md: "Pull",
"Content Discovery", "Error Codes") and the reference registry's behaviour. Everything goes
through the `target` fixture, and only over HTTP, so every test runs against each mode: the
local-mode session registry and the Google Cloud one on the emulators.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse

import pytest
import requests

from tests.helpers.protocol import (
    CONTAINERD_ACCEPT,
    DOCKER,
    DOCKER_LIST,
    ERROR_CODES,
    OCI,
    OCI_INDEX,
    raw,
)

pytestmark = pytest.mark.e2e

IMAGE = "shell/hello"
MISSING = "sha256:" + "0" * 64
BAD_NAMES = (
    "Shell/Hello",  # upper case
    "shell//hello",  # empty component
    "-shell",  # leading separator
    "shell/hello.",  # trailing separator
    "a" * 256,  # longer than 255
    "/".join(f"p{i}" for i in range(70)),  # more packages than an image may hold
)


@pytest.fixture(scope="module", params=["local", "gcp"])
def target(request):
    """The registry under test: anything with `url`, `host`, `get(path, method, **kwargs)`
    (requests' keyword arguments, redirects not followed) and `builds_started()`. Local mode
    is the session `registry`; Google Cloud mode is `gcp_registry`, on the emulators."""
    return request.getfixturevalue({"local": "registry", "gcp": "gcp_registry"}[request.param])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get_manifest(target, reference="latest", accept=OCI, method="GET", name=IMAGE):
    headers = {} if accept is None else {"Accept": accept}
    return target.get(f"/v2/{name}/manifests/{reference}", method, headers=headers)


def fetch_blob(target, digest, method="GET", name=IMAGE, **kwargs) -> requests.Response:
    """A blob request that follows a redirect, as clients do (a registry may hand blobs to a
    storage service); the registry's own first answer is in `response.history`."""
    kwargs["allow_redirects"] = True
    return target.get(f"/v2/{name}/blobs/{digest}", method, **kwargs)


def assert_error(response: requests.Response, status: int, code: str) -> dict:
    """A registry error: the status, a JSON body {"errors": [{code, message, detail?}]} (none
    on HEAD), and the API version header every /v2/ response carries."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    if response.request.method == "HEAD":
        assert response.content == b""
        return {}
    body = response.json()
    assert set(body) == {"errors"} and len(body["errors"]) >= 1
    for error in body["errors"]:
        assert error["code"] in ERROR_CODES
        assert isinstance(error["message"], str)
        assert set(error) <= {"code", "message", "detail"}
    assert body["errors"][0]["code"] == code
    return body["errors"][0]


@pytest.fixture(scope="module")
def pulled(target):
    """The OCI manifest of IMAGE by tag: (response, parsed body)."""
    response = get_manifest(target)
    assert response.status_code == 200, response.text
    return response, response.json()


# API version check


@pytest.mark.parametrize("path", ["/v2/", "/v2"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_ping_answers_200_with_the_api_version(target, path, method):
    response = target.get(path, method)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


# Pulling manifests


def test_get_manifest_by_tag_serves_the_manifest_with_its_digest_type_and_length(pulled):
    response, body = pulled
    assert response.headers["Docker-Content-Digest"] == sha256(response.content)
    assert response.headers["Content-Type"] == body["mediaType"] == OCI
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert body["schemaVersion"] == 2


def test_head_manifest_by_tag_has_no_body_and_the_headers_of_get(target, pulled):
    got, _ = pulled
    head = get_manifest(target, method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    for header in ("Docker-Content-Digest", "Content-Type", "Content-Length"):
        assert head.headers[header] == got.headers[header], header


def test_get_manifest_by_digest_is_byte_identical(target, pulled):
    got, _ = pulled
    digest = got.headers["Docker-Content-Digest"]
    by_digest = get_manifest(target, digest)
    assert by_digest.status_code == 200
    assert by_digest.content == got.content
    assert by_digest.headers["Docker-Content-Digest"] == digest
    assert by_digest.headers["Content-Type"] == OCI


def test_head_manifest_by_digest(target, pulled):
    got, _ = pulled
    digest = got.headers["Docker-Content-Digest"]
    head = get_manifest(target, digest, method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Docker-Content-Digest"] == digest
    assert int(head.headers["Content-Length"]) == len(got.content)
    assert head.headers["Content-Type"] == OCI


def test_manifest_by_digest_ignores_accept(target, pulled):
    """A digest names exact bytes: they are served whatever the client says it accepts."""
    got, _ = pulled
    digest = got.headers["Docker-Content-Digest"]
    for accept in (DOCKER, "*/*", None, "text/plain"):
        response = get_manifest(target, digest, accept=accept)
        assert response.status_code == 200, accept
        assert response.content == got.content, accept
        assert response.headers["Content-Type"] == OCI, accept


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_missing_tag_is_404_manifest_unknown(target, method):
    assert_error(get_manifest(target, "no-such-tag", method=method), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_missing_manifest_digest_is_404_manifest_unknown(target, method):
    assert_error(get_manifest(target, MISSING, method=method), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_malformed_manifest_digest_is_400_digest_invalid(target, method):
    response = get_manifest(target, "sha256:totallywrong", method=method)
    assert_error(response, 400, "DIGEST_INVALID")


def test_unknown_packages_are_422_manifest_unknown(target):
    assert_error(get_manifest(target, name="no-such-package"), 422, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_bad_name_is_400_name_invalid_on_every_endpoint(target, name):
    assert_error(get_manifest(target, name=name), 400, "NAME_INVALID")
    assert_error(get_manifest(target, MISSING, name=name), 400, "NAME_INVALID")
    assert_error(target.get(f"/v2/{name}/blobs/{MISSING}"), 400, "NAME_INVALID")
    assert_error(target.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")


def test_head_of_an_unbuilt_image_builds_it_once_and_get_by_digest_builds_nothing(target):
    """containerd's resolution: HEAD by tag for the digest, then GET by that digest."""
    name = "expat/libffi"
    before = target.builds_started()
    head = get_manifest(target, accept=CONTAINERD_ACCEPT, method="HEAD", name=name)
    assert head.status_code == 200 and head.content == b""
    assert target.builds_started() - before <= 1
    after_head = target.builds_started()
    digest = head.headers["Docker-Content-Digest"]
    got = get_manifest(target, digest, accept=CONTAINERD_ACCEPT, name=name)
    again = get_manifest(target, accept=CONTAINERD_ACCEPT, name=name)
    assert got.status_code == again.status_code == 200
    assert sha256(got.content) == digest == again.headers["Docker-Content-Digest"]
    assert int(head.headers["Content-Length"]) == len(got.content)
    assert target.builds_started() == after_head, "HEAD's build serves every later request"


def test_concurrent_head_and_get_of_an_unbuilt_image_share_one_build(target):
    name = "oniguruma/zlib"
    before = target.builds_started()
    results: list[requests.Response] = []

    def pull(method: str) -> None:
        results.append(get_manifest(target, method=method, name=name))

    threads = [threading.Thread(target=pull, args=(m,)) for m in ["HEAD", "GET"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 8
    assert len({r.headers["Docker-Content-Digest"] for r in results}) == 1
    assert all(r.content == b"" for r in results if r.request.method == "HEAD")
    assert target.builds_started() - before <= 1


# Pulling blobs


def test_every_blob_the_manifest_names_exists_with_its_size(target, pulled):
    _, body = pulled
    for descriptor in [body["config"], *body["layers"]]:
        head = fetch_blob(target, descriptor["digest"], "HEAD")
        assert head.status_code == 200, descriptor
        assert head.content == b""
        assert int(head.headers["Content-Length"]) == descriptor["size"]


def test_get_blob_serves_bytes_matching_its_digest(target, pulled):
    _, body = pulled
    for descriptor in (body["config"], body["layers"][0]):
        response = fetch_blob(target, descriptor["digest"])
        assert response.status_code == 200
        assert sha256(response.content) == descriptor["digest"]
        assert int(response.headers["Content-Length"]) == descriptor["size"]
        first = (response.history or [response])[0]
        assert first.headers["Docker-Content-Digest"] == descriptor["digest"]
        assert first.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_head_blob_gives_length_and_digest_without_body(target, pulled):
    _, body = pulled
    layer = body["layers"][0]
    head = target.get(f"/v2/{IMAGE}/blobs/{layer['digest']}", "HEAD")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["Content-Length"]) == layer["size"]
    assert head.headers["Docker-Content-Digest"] == layer["digest"]


def test_blob_range_is_206_with_content_range(target, pulled):
    _, body = pulled
    layer = body["layers"][0]
    size = layer["size"]
    full = fetch_blob(target, layer["digest"]).content
    ranges = [("bytes=10-109", 10, 109), ("bytes=-16", size - 16, size - 1)]
    ranges.append((f"bytes={size - 5}-", size - 5, size - 1))
    for header, start, end in ranges:
        part = fetch_blob(target, layer["digest"], headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == full[start : end + 1], header
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert int(part.headers["Content-Length"]) == end - start + 1


def test_blob_range_past_the_end_is_416(target, pulled):
    _, body = pulled
    layer = body["layers"][0]
    response = fetch_blob(target, layer["digest"], headers={"Range": "bytes=999999999-"})
    assert response.status_code == 416
    if not response.history:  # served by the registry itself, not by a storage service
        assert response.headers["Content-Range"] == f"bytes */{layer['size']}"
        assert_error(response, 416, "RANGE_INVALID")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_missing_blob_is_404_blob_unknown(target, method):
    assert_error(target.get(f"/v2/{IMAGE}/blobs/{MISSING}", method), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("digest", ["sha256:totallywrong", "sha256:" + "A" * 64, "md5:abc", "x"])
def test_malformed_blob_digest_is_400_digest_invalid(target, method, digest):
    assert_error(target.get(f"/v2/{IMAGE}/blobs/{digest}", method), 400, "DIGEST_INVALID")


# Accept negotiation


def test_accept_oci_alone_gets_oci(target):
    response = get_manifest(target, accept=OCI)
    assert response.headers["Content-Type"] == response.json()["mediaType"] == OCI


def test_accept_docker_alone_gets_docker_schema2(target):
    response = get_manifest(target, accept=DOCKER)
    assert response.headers["Content-Type"] == response.json()["mediaType"] == DOCKER


@pytest.mark.parametrize("accept", [None, "*/*", "application/*", "application/json"])
def test_wildcard_or_missing_accept_gets_docker_schema2(target, accept):
    response = get_manifest(target, accept=accept)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == response.json()["mediaType"] == DOCKER


def test_several_accept_lines_prefer_oci(target):
    """skopeo, podman and regctl send one Accept line per type."""
    headers = [("Accept", DOCKER), ("Accept", DOCKER_LIST), ("Accept", OCI), ("Accept", "*/*")]
    status, response_headers, body = raw(target, "GET", f"/v2/{IMAGE}/manifests/latest", headers)
    assert status == 200
    assert response_headers["Content-Type"] == json.loads(body)["mediaType"] == OCI
    assert response_headers["Docker-Content-Digest"] == sha256(body)


def test_one_comma_joined_accept_line_prefers_oci(target):
    """containerd sends every type in one line."""
    response = get_manifest(target, accept=CONTAINERD_ACCEPT)
    assert response.headers["Content-Type"] == response.json()["mediaType"] == OCI


def test_accept_with_q_zero_refuses_oci(target):
    response = get_manifest(target, accept=f"{OCI};q=0, {DOCKER}")
    assert response.headers["Content-Type"] == DOCKER


# Index negotiation, on a registry serving two platforms (NIXERY_PLATFORMS; conftest's
# MULTI_PLATFORM): the index goes to clients that name one, and only to them.


@pytest.fixture(scope="module", params=["local", "gcp"])
def multi_target(request):
    name = {"local": "multi_registry", "gcp": "gcp_multi_registry"}[request.param]
    return request.getfixturevalue(name)


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ([OCI_INDEX, OCI], OCI_INDEX),
        ([DOCKER_LIST, DOCKER], DOCKER_LIST),
        ([DOCKER, DOCKER_LIST, OCI, OCI_INDEX, "*/*"], OCI_INDEX),  # skopeo, podman
        ([CONTAINERD_ACCEPT], OCI_INDEX),
        ([DOCKER, DOCKER_LIST], DOCKER_LIST),  # Docker
        ([OCI], OCI),
        ([DOCKER], DOCKER),  # schema2-only clients
        ([], DOCKER),
        ([f"{OCI_INDEX};q=0, {DOCKER_LIST};q=0, {OCI}"], OCI),
    ],
)
def test_index_negotiation(multi_target, accept, media_type):
    headers = [("Accept", a) for a in accept]
    status, response_headers, body = raw(
        multi_target, "GET", f"/v2/{IMAGE}/manifests/latest", headers
    )
    assert status == 200
    assert response_headers["Content-Type"] == json.loads(body)["mediaType"] == media_type
    assert response_headers["Docker-Content-Digest"] == sha256(body)
    if media_type in (OCI_INDEX, DOCKER_LIST):
        children = [m["digest"] for m in json.loads(body)["manifests"]]
        assert len(children) == 2
        for digest in children:  # each one by digest, whatever the Accept
            assert get_manifest(multi_target, digest, accept=None).status_code == 200


def test_both_formats_describe_the_same_image(target):
    oci = get_manifest(target, accept=OCI).json()
    docker = get_manifest(target, accept=DOCKER).json()
    assert oci["config"]["digest"] == docker["config"]["digest"]
    assert [layer["digest"] for layer in oci["layers"]] == [
        layer["digest"] for layer in docker["layers"]
    ]


def test_a_digest_one_client_was_given_serves_identical_bytes_to_every_client(target):
    accepts = [OCI, DOCKER, CONTAINERD_ACCEPT, "*/*", None]
    given = {accept: get_manifest(target, accept=accept) for accept in accepts}
    for response in given.values():
        digest = response.headers["Docker-Content-Digest"]
        for accept in accepts:
            for method in ("GET", "HEAD"):
                again = get_manifest(target, digest, accept=accept, method=method)
                assert again.status_code == 200
                assert again.headers["Docker-Content-Digest"] == digest
                assert again.headers["Content-Type"] == response.headers["Content-Type"]
                if method == "GET":
                    assert again.content == response.content


def test_repeated_requests_give_the_same_digests(target, pulled):
    """Reproducible: the same request and source revision always name the same bytes (across
    restarts and fresh storage too: tests/e2e/test_local.py's restart test)."""
    got, body = pulled
    again = get_manifest(target)
    assert again.content == got.content
    config = fetch_blob(target, body["config"]["digest"]).content
    assert json.loads(config)["created"] == "1970-01-01T00:00:01Z"


# Listing tags


def list_tags(target, query: str = "", name: str = IMAGE) -> requests.Response:
    return target.get(f"/v2/{name}/tags/list{query}")


def test_tags_list_names_latest(target):
    response = list_tags(target)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"name": IMAGE, "tags": ["latest"]}


def test_tags_list_answers_for_every_valid_name(target):
    """Every valid name is a potential image: its tags are listed without building it."""
    before = target.builds_started()
    response = list_tags(target, name="no-such-package/another")
    assert response.json() == {"name": "no-such-package/another", "tags": ["latest"]}
    assert target.builds_started() == before


def test_tags_list_n_zero_is_an_empty_list_without_link(target):
    response = list_tags(target, "?n=0")
    assert response.status_code == 200
    assert response.json()["tags"] == []
    assert "Link" not in response.headers


def test_tags_list_n_caps_the_count(target):
    response = list_tags(target, "?n=1")
    assert response.json()["tags"] == ["latest"]
    assert "Link" not in response.headers, "no further page"
    assert list_tags(target, "?n=1000").json()["tags"] == ["latest"]
    assert list_tags(target, "?n=").json()["tags"] == ["latest"], "an empty n is no n"


def test_tags_list_last_starts_after_it(target):
    assert list_tags(target, "?last=latest").json()["tags"] == []
    assert list_tags(target, "?n=10&last=latest").json()["tags"] == []
    assert list_tags(target, "?n=10&last=a").json()["tags"] == ["latest"]
    assert list_tags(target, "?last=zzz").json()["tags"] == []


def test_tags_list_tags_are_sorted_and_valid(target):
    tags = list_tags(target).json()["tags"]
    assert tags == sorted(tags)
    assert "latest" in tags


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "9" * 5000], ids=["-1", "abc", "1.5", "huge"])
def test_tags_list_invalid_n_is_400(target, n):
    assert_error(list_tags(target, f"?n={n}"), 400, "PAGINATION_NUMBER_INVALID")


# Referrers (distribution spec 1.1, "Listing Referrers"): every image has an SBOM about it


SBOM = "application/vnd.cyclonedx+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def referrers(target, digest, query="", name=IMAGE, method="GET"):
    return target.get(f"/v2/{name}/referrers/{digest}{query}", method)


def assert_index(response) -> list[dict]:
    """An OCI image index answered 200, as the spec wants even when it lists nothing."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == OCI_INDEX
    body = response.json()
    assert body["schemaVersion"] == 2 and body["mediaType"] == OCI_INDEX
    return body["manifests"]


@pytest.mark.parametrize("accept", [OCI, DOCKER])
def test_each_manifest_of_an_image_has_an_sbom_among_its_referrers(target, accept):
    image = get_manifest(target, accept=accept)
    subject = image.headers["Docker-Content-Digest"]
    (descriptor,) = assert_index(referrers(target, subject))
    assert descriptor["artifactType"] == SBOM
    assert descriptor["mediaType"] == OCI
    # The descriptor names a manifest this registry serves, whose subject is the image.
    artifact = get_manifest(target, descriptor["digest"])
    assert artifact.status_code == 200
    assert sha256(artifact.content) == descriptor["digest"]
    assert len(artifact.content) == descriptor["size"]
    body = artifact.json()
    assert body["artifactType"] == SBOM and body["mediaType"] == OCI
    assert body["subject"] == {
        "mediaType": accept, "digest": subject, "size": len(image.content)
    }  # fmt: skip
    assert descriptor.get("annotations") == body.get("annotations")
    assert body["config"]["mediaType"] == EMPTY
    for blob in (body["config"], *body["layers"]):
        fetched = fetch_blob(target, blob["digest"])
        assert fetched.status_code == 200
        assert sha256(fetched.content) == blob["digest"] and len(fetched.content) == blob["size"]
    (layer,) = body["layers"]
    assert layer["mediaType"] == SBOM
    sbom = json.loads(fetch_blob(target, layer["digest"]).content)
    assert sbom["bomFormat"] == "CycloneDX"


def test_both_manifests_of_an_image_share_one_sbom_blob(target):
    blobs = set()
    for accept in (OCI, DOCKER):
        subject = get_manifest(target, accept=accept).headers["Docker-Content-Digest"]
        (descriptor,) = assert_index(referrers(target, subject))
        blobs.add(get_manifest(target, descriptor["digest"]).json()["layers"][0]["digest"])
    assert len(blobs) == 1


def test_referrers_filtered_by_artifact_type_say_so(target, pulled):
    subject = pulled[0].headers["Docker-Content-Digest"]
    everything = assert_index(referrers(target, subject))
    matching = referrers(target, subject, "?" + urllib.parse.urlencode({"artifactType": SBOM}))
    assert assert_index(matching) == everything
    assert matching.headers["OCI-Filters-Applied"] == "artifactType"
    other = referrers(target, subject, "?artifactType=application/vnd.example.other")
    assert assert_index(other) == []
    assert other.headers["OCI-Filters-Applied"] == "artifactType"
    assert "OCI-Filters-Applied" not in referrers(target, subject).headers


def test_a_digest_with_no_referrers_gets_an_empty_index_not_a_404(target, pulled):
    assert assert_index(referrers(target, MISSING)) == []
    # An SBOM itself has no referrers either.
    subject = pulled[0].headers["Docker-Content-Digest"]
    (descriptor,) = assert_index(referrers(target, subject))
    assert assert_index(referrers(target, descriptor["digest"])) == []


def test_referrers_are_the_same_whatever_name_the_image_is_pulled_by(target):
    subject = get_manifest(target, name="hello/shell").headers["Docker-Content-Digest"]
    assert assert_index(referrers(target, subject)) == assert_index(
        referrers(target, subject, name="anything")
    )


@pytest.mark.parametrize("digest", ["sha256:totallywrong", "sha256:" + "A" * 64, "nodigest"])
def test_referrers_of_a_malformed_digest_is_400_digest_invalid(target, digest):
    assert_error(referrers(target, digest), 400, "DIGEST_INVALID")


def test_referrers_of_a_bad_name_is_400_name_invalid(target):
    assert_error(referrers(target, MISSING, name="Bad/Name"), 400, "NAME_INVALID")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST"])
def test_referrers_cannot_be_written(target, method):
    assert_error(referrers(target, MISSING, method=method), 405, "UNSUPPORTED")


def test_the_oci_manifest_and_config_say_where_the_image_comes_from(target, pulled):
    _, body = pulled
    annotations = body["annotations"]
    # The packages the image holds: `shell` expanded, and those every image holds.
    title = annotations["org.opencontainers.image.title"].split("/")
    assert title == sorted(title) and {"hello", "bashInteractive", "cacert"} <= set(title)
    assert annotations["org.opencontainers.image.created"] == "1970-01-01T00:00:01Z"
    assert annotations["org.opencontainers.image.revision"]
    # A path source (the demo set's) has no address to give: its revision names it.
    assert "org.opencontainers.image.source" not in annotations
    config = fetch_blob(target, body["config"]["digest"]).json()
    assert config["config"]["Labels"] == annotations


# Push and delete: a read-only registry


# Every push and delete endpoint of the spec; D is a digest, U an upload session.
PUSH_AND_DELETE = [
    ("POST", "blobs/uploads/"),
    ("POST", "blobs/uploads/?digest=D"),
    ("POST", "blobs/uploads/?mount=D&from=hello"),
    ("GET", "blobs/uploads/U"),
    ("PATCH", "blobs/uploads/U"),
    ("PUT", "blobs/uploads/U?digest=D"),
    ("DELETE", "blobs/uploads/U"),
    ("PUT", "manifests/latest"),
    ("PUT", "manifests/D"),
    ("DELETE", "manifests/latest"),
    ("DELETE", "manifests/D"),
    ("DELETE", "blobs/D"),
    ("POST", "tags/list"),
]


@pytest.mark.parametrize(
    ("method", "endpoint"), PUSH_AND_DELETE, ids=[" ".join(r) for r in PUSH_AND_DELETE]
)
def test_push_and_delete_endpoints_are_405_unsupported(target, method, endpoint):
    endpoint = endpoint.replace("D", MISSING).replace("U", "0d9a3ec4-6ec1-4e2a-9f56-8c2a3b1f4e11")
    response = target.get(f"/v2/{IMAGE}/{endpoint}", method, data=b"{}")
    assert_error(response, 405, "UNSUPPORTED")
    assert "Allow" in response.headers


def test_push_with_a_malformed_digest_is_400(target):
    """The conformance suite's error-body check: a PUT of sha256:totallywrong is 400 or 404
    with a spec error code (the request is malformed before it is unsupported)."""
    response = target.get(
        f"/v2/{IMAGE}/manifests/sha256:totallywrong",
        "PUT",
        data=b'{"schemaVersion": 2}',
        headers={"Content-Type": OCI},
    )
    assert_error(response, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("method", ["DELETE", "OPTIONS", "PROPFIND"])
def test_other_methods_on_the_ping_are_405_unsupported(target, method):
    response = target.get("/v2/", method)
    assert_error(response, 405, "UNSUPPORTED")
    assert response.headers["Allow"] == "GET, HEAD"


def test_unknown_endpoint_is_a_json_404(target):
    response = target.get(f"/v2/{IMAGE}/no-such-endpoint/{MISSING}")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["errors"][0]["code"] in ERROR_CODES
