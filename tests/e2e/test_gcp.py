"""Google Cloud mode end to end, against the emulators: the registry function, Cloud Tasks,
the Cloud Run builder, Firestore and GCS, pulled through by real clients."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
import uuid
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.helpers.emulators import BUCKET, GcpRegistry
from tests.helpers.registries import DEMO, pull_concurrently

pytestmark = pytest.mark.e2e

OCI = "application/vnd.oci.image.manifest.v1+json"


def manifest(reg, name, ref="latest", method="GET"):
    return reg.get(f"/v2/{name}/manifests/{ref}", method, headers={"Accept": OCI})


def test_ping_answers_without_loading_the_backends(gcp_registry):
    response = gcp_registry.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_skopeo_and_podman_pull_and_run_through_signed_urls(gcp_registry, clients, tmp_path):
    copied = clients.copy(gcp_registry.host, "shell/hello", tmp_path / "img")
    assert copied.returncode == 0, copied.stderr
    for blob in (tmp_path / "img" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    ran = clients.podman("run", "--rm", f"{gcp_registry.host}/shell/hello", "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "Hello, world!"


def test_blobs_redirect_to_signed_urls_and_head_does_not(gcp_registry):
    layer = manifest(gcp_registry, "shell/hello").json()["layers"][0]
    path = f"/v2/shell/hello/blobs/{layer['digest']}"
    redirect = gcp_registry.get(path)
    assert redirect.status_code == 307
    url = urlparse(redirect.headers["Location"])
    query = parse_qs(url.query)
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["300"]
    assert url.path.endswith(layer["digest"].split(":")[1])
    fetched = requests.get(redirect.headers["Location"], timeout=30)
    assert "sha256:" + hashlib.sha256(fetched.content).hexdigest() == layer["digest"]
    head = gcp_registry.get(path, "HEAD")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == layer["size"]
    missing = gcp_registry.get(f"/v2/shell/hello/blobs/sha256:{'0' * 64}")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_a_public_mirror_redirects_to_plain_urls(emulators, clients, tmp_path):
    """NIXERY_BLOB_URL, as the deployment sets it with public_mirror: the redirect names the
    blob under the public bucket's (or its CDN's) URL, unsigned, so that caches may keep it.
    fake-gcs-server serves a bucket's objects at /BUCKET/NAME as Google's public URLs do."""
    public = f"{emulators.env()['STORAGE_EMULATOR_HOST']}/{BUCKET}"
    reg = GcpRegistry(tmp_path / "r", emulators, NIXERY_BLOB_URL=public + "/").start()
    try:
        layer = manifest(reg, "shell/hello").json()["layers"][0]
        redirect = reg.get(f"/v2/shell/hello/blobs/{layer['digest']}")
        assert redirect.status_code == 307
        assert redirect.headers["Location"] == f"{public}/blobs/sha256/{layer['digest'][7:]}"
        copied = clients.copy(reg.host, "shell/hello", tmp_path / "img")
        assert copied.returncode == 0, copied.stderr
    finally:
        reg.stop()


def test_same_digests_as_local_mode(gcp_registry, registry):
    gcp = manifest(gcp_registry, "shell/hello")
    local = manifest(registry, "shell/hello")
    assert gcp.headers["Docker-Content-Digest"] == local.headers["Docker-Content-Digest"]


def test_concurrent_pulls_cause_one_build(gcp_registry):
    before = gcp_registry.builds_started()
    # As many as one address may have waiting for builds (NIXERY_CLIENT_WAITERS: 80 threads / 8).
    results = pull_concurrently(gcp_registry, "jq/htop", 10)
    assert [r.status_code for r in results] == [200] * 10
    assert len({r.headers["Docker-Content-Digest"] for r in results}) == 1
    assert gcp_registry.builds_started() == before + 1


def test_unknown_packages_and_failed_builds(gcp_registry):
    unknown = manifest(gcp_registry, "hello/nope-one/nope-two")
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["detail"]["packages"] == ["nope-one", "nope-two"]
    broken = manifest(gcp_registry, "broken")
    assert broken.status_code == 422
    assert "broken is broken on purpose" in json.dumps(broken.json())
    builds = gcp_registry.builds_started()
    assert manifest(gcp_registry, "broken").status_code == 422
    assert gcp_registry.builds_started() == builds, "the failure is remembered"


def test_builder_logs_are_structured_json(gcp_registry):
    assert manifest(gcp_registry, "shell/hello").status_code == 200
    entries = [json.loads(line) for line in gcp_registry.builder_log.read_text().splitlines()
               if line.startswith("{")]  # fmt: skip
    steps = [e for e in entries if e.get("step")]
    assert steps, "each build step is logged with its timing"
    assert all(e["severity"] in ("INFO", "WARNING", "ERROR") for e in entries)
    assert all(e["build_key"] and isinstance(e["seconds"], float) for e in steps)


def test_duplicate_task_delivery_is_harmless(gcp_registry, firestore_client):
    assert manifest(gcp_registry, "shell/hello").status_code == 200
    record = _records(firestore_client, gcp_registry, "done")[0]
    builds = gcp_registry.builds_started()
    for _ in range(2):
        again = requests.post(
            gcp_registry.env["NIXERY_BUILDER_URL"], json=record["job"], timeout=60
        )
        assert again.status_code == 200 and "already built" in again.text
    assert gcp_registry.builds_started() == builds


def test_records_carry_the_ttl_policy_field(gcp_registry, firestore_client):
    """``expires``: the field the deployment's Firestore TTL policy deletes records by."""
    assert manifest(gcp_registry, "shell/hello").status_code == 200
    assert manifest(gcp_registry, "broken").status_code >= 400
    day = 86400
    for status, since, keep in (("done", "used", 180 * day), ("failed", "updated", day)):
        for record in _records(firestore_client, gcp_registry, status):
            left = record["expires"].timestamp() - record[since]
            assert left == pytest.approx(keep, abs=0.01), (status, left)


def _records(client, reg, status):
    docs = client.collection(reg.env["NIXERY_FIRESTORE_PREFIX"] + "builds").stream()
    return [d.to_dict() for d in docs if d.to_dict()["status"] == status]


@pytest.fixture
def sleepy_set(tmp_path):
    """The demo set plus `sleepy`, whose build takes 8 s and is new on every run (a nonce)."""
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / "default.nix").write_text(
        "{ system ? builtins.currentSystem, ... }:\n"
        f"let demo = import {DEMO} {{ inherit system; }}; in\n"
        "demo // { sleepy = derivation {\n"
        '  name = "sleepy-1.0"; inherit system; builder = "${demo.busybox}/bin/sh";\n'
        f'  args = [ "-c" "sleep 8; echo {uuid.uuid4().hex} > $out" ]; }}; }}\n'
    )
    return pkgs


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_killed_builder_is_taken_over_and_nothing_half_built_is_served(
    emulators, sleepy_set, tmp_path, firestore_client
):
    reg = GcpRegistry(
        tmp_path / "r", emulators, NIXERY_PKGS_PATH=str(sleepy_set),
        NIXERY_LEASE_TTL="3", NIX_TIMEOUT="120",
    ).start()  # fmt: skip
    try:
        result = {}
        pull = threading.Thread(target=lambda: result.update(r=manifest(reg, "sleepy")))
        pull.start()
        wait_for(lambda: reg.builds_started() == 1)
        records = _records(firestore_client, reg, "building")
        assert len(records) == 1 and records[0]["lease_owner"]
        reg.builder.kill(signal.SIGKILL)
        reg.start_builder()  # on the same URL: Cloud Tasks' retries reach it
        pull.join(timeout=180)
        response = result["r"]
        assert response.status_code == 200, response.text
        assert reg.builds_started() == 2, "the new builder ran the build again"
        done = _records(firestore_client, reg, "done")
        assert len(done) == 1 and done[0]["lease_owner"] is None
        assert done[0]["attempt"] >= 1
        for layer in response.json()["layers"]:
            blob = reg.get(f"/v2/sleepy/blobs/{layer['digest']}", "HEAD")
            assert blob.status_code == 200, "every blob of a served manifest exists"
    finally:
        reg.stop()


def test_a_build_that_outlasts_the_wait_is_503_then_served(emulators, sleepy_set, tmp_path):
    reg = GcpRegistry(
        tmp_path / "r", emulators, NIXERY_PKGS_PATH=str(sleepy_set),
        NIXERY_BUILD_WAIT="2", NIX_TIMEOUT="120",
    ).start()  # fmt: skip
    try:
        first = manifest(reg, "sleepy")
        assert first.status_code == 503
        assert first.headers["Retry-After"].isdigit()
        assert first.json()["errors"][0]["code"] == "UNAVAILABLE"
        wait_for(lambda: manifest(reg, "sleepy").status_code == 200, timeout=120)
        assert reg.builds_started() == 1
    finally:
        reg.stop()


def test_new_builds_are_limited_per_client_and_in_all(emulators, tmp_path):
    """Counted in Firestore, since requests land on many instances; the client is the address
    Google's front end appends to X-Forwarded-For (the last entry: the rest is the client's
    own say). Builds under way are bounded too."""
    reg = GcpRegistry(
        tmp_path / "r", emulators, NIXERY_CLIENT_BUILDS="1/3600", NIXERY_MAX_QUEUED_BUILDS="1",
        NIXERY_BUILD_WAIT="1", NIX_TIMEOUT="60",  # past the test; its Nix outlives the builder
    ).start()  # fmt: skip
    try:

        def pull(name: str, client: str, claimed: str = "9.9.9.9"):
            headers = {"Accept": OCI, "X-Forwarded-For": f"{claimed}, {client}"}
            return reg.get(f"/v2/{name}/manifests/latest", headers=headers)

        assert pull("slow", "10.0.0.1").status_code == 503, "still building, and counted"
        again = pull("slow", "10.0.0.1", claimed="10.0.0.2")
        assert again.status_code == 503, "joining the build is free"
        limited = pull("hello", "10.0.0.1", claimed="10.0.0.3")
        assert limited.status_code == 429, limited.text
        assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert 0 < int(limited.headers["Retry-After"]) <= 3600, "the end of its window"
        full = pull("hello", "10.0.0.4")
        assert full.status_code == 503 and "builds are under way" in full.text
    finally:
        if reg.builder:
            reg.builder.kill(signal.SIGKILL)  # it would finish `slow` first
        reg.stop()
