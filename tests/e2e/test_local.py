"""Local mode end to end: a real registry, real Nix builds from the demo set, real clients."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import http.server
import importlib.metadata
import json
import os
import subprocess
import threading
from collections.abc import Iterator

import pytest
import requests
from flask import Flask

from nixery.blobs import store_bytes
from nixery.config import AuthSettings, ConnectionLimits, ServeSettings
from nixery.errors import SourceUnavailable
from nixery.http.protocol import _WarmManifests, create_app
from nixery.local import http_server
from nixery.local.file_blob_store import FileBlobStore
from nixery.records import Revision
from nixery.service.images import ImageService
from tests.helpers.fakes import MemoryBlobStore, MemoryState, ScriptedQueue, StaticSource
from tests.helpers.registries import DEMO, Registry, git, pull_concurrently

pytestmark = pytest.mark.e2e

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


def manifest(reg: Registry, name: str, ref: str = "latest", accept: str = OCI, method="GET"):
    return reg.get(f"/v2/{name}/manifests/{ref}", method, headers={"Accept": accept})


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    if response.request.method == "HEAD":
        assert response.content == b""
        return {}
    errors = response.json()["errors"]
    assert errors[0]["code"] == code
    return errors[0]


def test_ping(registry):
    response = registry.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_image_root_is_a_usable_filesystem(registry, clients):
    script = (
        "env; readlink /usr/bin/env; cat /etc/passwd; "
        "test -f $SSL_CERT_FILE && echo certs-ok; ls -ld /tmp"
    )
    ran = clients.podman("run", "--rm", f"{registry.host}/shell/hello", "bash", "-c", script)
    assert ran.returncode == 0, ran.stderr
    assert "PATH=/bin" in ran.stdout
    assert "coreutils" in ran.stdout  # /usr/bin/env -> coreutils' env
    assert "root:x:0:0" in ran.stdout and "nobody" in ran.stdout
    assert "certs-ok" in ran.stdout
    assert "drwxrwxrwt" in ran.stdout


def test_package_order_does_not_matter(registry):
    a = manifest(registry, "hello/shell")
    b = manifest(registry, "shell/hello")
    assert a.status_code == b.status_code == 200
    assert a.headers["Docker-Content-Digest"] == b.headers["Docker-Content-Digest"]
    assert a.content == b.content


def test_head_and_by_digest(registry):
    got = manifest(registry, "shell/hello")
    head = manifest(registry, "shell/hello", method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    digest = got.headers["Docker-Content-Digest"]
    assert head.headers["Docker-Content-Digest"] == digest
    assert int(head.headers["Content-Length"]) == len(got.content)
    assert head.headers["Content-Type"] == got.headers["Content-Type"] == OCI
    assert digest == "sha256:" + hashlib.sha256(got.content).hexdigest()
    by_digest = manifest(registry, "shell/hello", digest, accept=DOCKER)
    assert by_digest.status_code == 200
    assert by_digest.content == got.content, "a digest names exact bytes, whatever Accept says"
    assert by_digest.headers["Content-Type"] == OCI


def test_accept_chooses_the_format(registry):
    oci = manifest(registry, "shell/hello", accept=OCI)
    docker = manifest(registry, "shell/hello", accept=DOCKER)
    # Two separate Accept lines, as skopeo and podman send them.
    conn = http.client.HTTPConnection(registry.host, timeout=60)
    conn.putrequest("GET", "/v2/shell/hello/manifests/latest")
    conn.putheader("Accept", DOCKER)
    conn.putheader("Accept", OCI)
    conn.endheaders()
    both = conn.getresponse()
    both.read()
    assert oci.json()["mediaType"] == OCI and docker.json()["mediaType"] == DOCKER
    assert docker.headers["Content-Type"] == DOCKER
    assert both.getheader("Content-Type") == OCI
    assert oci.json()["config"]["digest"] == docker.json()["config"]["digest"]


def test_blobs_serve_with_ranges(registry):
    body = manifest(registry, "shell/hello").json()
    layer = body["layers"][0]
    full = registry.get(f"/v2/shell/hello/blobs/{layer['digest']}")
    assert full.status_code == 200
    assert len(full.content) == layer["size"]
    assert "sha256:" + hashlib.sha256(full.content).hexdigest() == layer["digest"]
    assert full.headers["Docker-Content-Digest"] == layer["digest"]
    part = registry.get(
        f"/v2/shell/hello/blobs/{layer['digest']}", headers={"Range": "bytes=10-109"}
    )
    assert part.status_code == 206
    assert part.content == full.content[10:110]
    assert part.headers["Content-Range"] == f"bytes 10-109/{layer['size']}"
    head = registry.get(f"/v2/shell/hello/blobs/{layer['digest']}", "HEAD")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == layer["size"]
    config = registry.get(f"/v2/shell/hello/blobs/{body['config']['digest']}")
    assert json.loads(config.content)["architecture"] == "amd64"


@contextlib.contextmanager
def served(app: Flask) -> Iterator[str]:
    """``app`` behind the real server, on a free port: its URL."""
    server = http_server.create_server(app, "127.0.0.1", 0, ConnectionLimits())
    threading.Thread(target=server.run, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()


def stored_blob(root) -> tuple[bytes, str, ImageService]:
    """A 3 MB blob in a file store, and a service over it."""
    data = os.urandom(3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = FileBlobStore(root)
    store_bytes(blobs, digest, data)
    service = ImageService(source=StaticSource({}), images=MemoryState(), blobs=blobs,
                           builds=ScriptedQueue(), wait=1, failure_ttl=1)  # fmt: skip
    return data, digest, service


def test_a_blob_goes_out_with_sendfile_whole_and_in_part_as_usual(tmp_path, monkeypatch):
    """The kernel copies a blob from the page cache to the socket: none of its bytes pass
    through Python. A range is served as before, by werkzeug."""
    data, digest, service = stored_blob(tmp_path / "storage")
    sent: list[int] = []

    def sendfile(out: int, fd: int, offset: int, count: int) -> int:
        sent.append(real(out, fd, offset, count))
        return sent[-1]

    real = os.sendfile
    monkeypatch.setattr(http_server.os, "sendfile", sendfile)
    with served(create_app(service)) as url:
        whole = requests.get(f"{url}/v2/hello/blobs/{digest}", timeout=30)
        assert whole.status_code == 200 and whole.content == data
        assert sum(sent) == len(data)
        headers = {"Range": "bytes=10-109"}
        part = requests.get(f"{url}/v2/hello/blobs/{digest}", headers=headers, timeout=30)
        assert part.status_code == 206 and part.content == data[10:110]


def test_a_file_the_kernel_will_not_sendfile_goes_as_waitress_sends_it(tmp_path, monkeypatch):
    """As ``socket.sendfile`` does, a refusal before any byte went (a file system without
    sendfile: EINVAL) has the file sent with plain sends. No file system here refuses, so
    ``os.sendfile`` is replaced in-process by one that raises as such a kernel would."""
    data, digest, service = stored_blob(tmp_path / "storage")
    refused: list[int] = []

    def sendfile(out: int, fd: int, offset: int, count: int) -> int:
        refused.append(offset)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(http_server.os, "sendfile", sendfile)
    with served(create_app(service)) as url:
        for _ in range(2):
            whole = requests.get(f"{url}/v2/hello/blobs/{digest}", timeout=30)
            assert whole.status_code == 200 and whole.content == data
    assert refused == [0, 0], "tried once per reply, then left alone"


def test_waitress_is_the_version_the_server_copies_from() -> None:
    """``_Channel._flush_some`` copies waitress 3.0.2's: another version needs it re-read."""
    assert importlib.metadata.version("waitress") == "3.0.2"


class FailingSource(StaticSource):
    """A source whose every lookup fails with ``error``, counted in ``resolved``."""

    def __init__(self, error: Exception) -> None:
        super().__init__({})
        self.error = error

    def resolve(self, tag: str) -> Revision | None:
        super().resolve(tag)
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (SourceUnavailable("git ls-remote timed out"), 503, "UNAVAILABLE"),
        (RuntimeError("a bug in a source"), 500, "UNKNOWN"),
    ],
)
def test_an_error_of_the_warm_path_is_the_apps_reply_after_one_lookup(
    error: Exception, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The wrapper before Flask asks the service first; what that raises goes on to the app,
    which answers it as every error under /v2/ (a JSON body; a bug logged with its traceback)
    without asking again: a failing lookup (a source's timeout) runs once per pull."""
    source = FailingSource(error)
    service = ImageService(source=source, images=MemoryState(), blobs=MemoryBlobStore(),
                           builds=ScriptedQueue(), wait=1, failure_ttl=1)  # fmt: skip
    with served(create_app(service)) as url:
        response = requests.get(f"{url}/v2/shell/hello/manifests/latest", timeout=30)
    assert_error(response, status, code)
    assert source.resolved == ["latest"]
    if status == 500:
        assert "unexpected error serving GET /v2/shell/hello/manifests/latest" in caplog.text
        assert "a bug in a source" in caplog.text


def test_a_registry_with_auth_answers_every_pull_through_the_app() -> None:
    """A private registry checks who asks before anything: no answer from memory before it."""
    service = ImageService(source=StaticSource({}), images=MemoryState(),
                           blobs=MemoryBlobStore(), builds=ScriptedQueue(), wait=1,
                           failure_ttl=1)  # fmt: skip
    assert isinstance(create_app(service).wsgi_app, _WarmManifests)
    auth = AuthSettings("basic", {"alice": "unused"}, b"k" * 32)
    settings = ServeSettings(failure_ttl=1, build_wait=1, web_dir=None, max_packages=10,
                             client_builds=None, trusted_proxies=0, auth=auth,
                             public_url=None)  # fmt: skip
    app = create_app(service, settings)
    assert not isinstance(app.wsgi_app, _WarmManifests)
    with served(app) as url:
        response = requests.get(f"{url}/v2/shell/hello/manifests/latest", timeout=30)
    assert_error(response, 401, "UNAUTHORIZED")
    assert service.source.resolved == []  # type: ignore[attr-defined]


def test_a_manifest_answered_from_memory_is_the_reply_flask_gives(make_registry, tmp_path):
    """The first pull of each kind goes through Flask's route, the same pull again is answered
    from memory before Flask (``_WarmManifests``): the same status, headers and body, by tag
    in either format and by digest, GET and HEAD, each with its access log line."""
    reg = make_registry(tmp_path / "storage")

    def reply(response: requests.Response) -> tuple[int, dict[str, str], bytes]:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return response.status_code, {k: v for k, v in headers.items()
                                      if k not in ("date", "server")}, response.content  # fmt: skip

    digest = manifest(reg, "shell/hello").headers["Docker-Content-Digest"]
    pulls = [("latest", OCI, "GET"), ("latest", DOCKER, "HEAD"), ("latest", DOCKER, "GET"),
             (digest, OCI, "GET"), (digest, OCI, "HEAD")]  # fmt: skip
    for ref, accept, method in pulls:
        through_flask = reply(manifest(reg, "shell/hello", ref, accept, method))
        from_memory = reply(manifest(reg, "shell/hello", ref, accept, method))
        assert from_memory == through_flask, (ref, accept, method)
        status, headers, body = from_memory
        assert status == 200 and headers["docker-content-digest"].startswith("sha256:")
        assert headers["docker-distribution-api-version"] == "registry/2.0"
        assert headers["content-type"] == (accept if ref == "latest" else OCI)
        assert body == b"" if method == "HEAD" else int(headers["content-length"]) == len(body)
    log = reg.log()
    for ref, _, method in pulls:
        assert log.count(f"{method} /v2/shell/hello/manifests/{ref} 200 ") >= 2, (method, ref)


def test_a_tag_whose_package_set_changed_is_the_new_image_at_its_next_pull(make_registry, tmp_path):
    """A pull by tag is answered from memory by the tag's revision: a new revision is a new
    image at once (with NIXERY_REVISION_TTL=0), never the old one remembered."""
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / "default.nix").write_text(f"# first\nargs: import {DEMO} args\n")
    reg = make_registry(tmp_path / "storage", NIXERY_PKGS_PATH=str(pkgs), NIXERY_REVISION_TTL="0")
    first = manifest(reg, "hello")
    assert first.ok, first.text
    assert manifest(reg, "hello").content == first.content
    (pkgs / "default.nix").write_text(f"# second\nargs: import {DEMO} args\n")
    second = manifest(reg, "hello")
    assert second.ok, second.text
    assert second.headers["Docker-Content-Digest"] != first.headers["Docker-Content-Digest"]
    assert reg.builds_started() == 2


def range_cases(size: int) -> list[tuple[str, int, tuple[int, int] | None]]:
    """(Range, status, the bytes served: first and last, None for all) as RFC 9110 reads it."""
    return [
        ("bytes=10-109", 206, (10, 109)),
        (f"bytes=-{size + 1000}", 206, (0, size - 1)),  # a longer suffix: the whole blob
        ("bytes=-16", 206, (size - 16, size - 1)),
        (f"bytes={size - 5}-{size + 99}", 206, (size - 5, size - 1)),
        ("items=0-5", 200, None),  # another unit: ignored
        ("bytes=x-y", 200, None),  # unparsable: ignored
        ("bytes=", 200, None),
        ("bytes=5-2", 200, None),  # invalid: ignored
        ("bytes=0-5,10-20", 200, None),  # several: the whole blob (docs/clients.md)
        (f"bytes={size}-", 416, None),
        (f"bytes={size + 10}-{size + 20}", 416, None),
    ]


def test_ranges_are_read_as_rfc_9110_reads_them_by_requests_and_curl(registry, tmp_path):
    layer = manifest(registry, "shell/hello").json()["layers"][0]
    path, size = f"/v2/shell/hello/blobs/{layer['digest']}", layer["size"]
    full = registry.get(path).content
    for header, status, span in range_cases(size):
        answer = registry.get(path, headers={"Range": header})
        assert answer.status_code == status, (header, answer.text)
        curled = subprocess.run(
            ["curl", "-sS", "-o", str(tmp_path / "body"), "-D", str(tmp_path / "head"),
             "-w", "%{http_code}", "-H", f"Range: {header}", registry.url + path],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert int(curled.stdout) == status, header
        body = (tmp_path / "body").read_bytes()
        lines = (tmp_path / "head").read_text().splitlines()
        ranged = [line.split(":", 1)[1].strip() for line in lines
                  if line.lower().startswith("content-range:")] or None  # fmt: skip
        if status == 416:
            assert answer.headers["Content-Range"] == f"bytes */{size}"
            assert ranged == [f"bytes */{size}"]
            continue
        first, last = span or (0, size - 1)
        for got in (answer.content, body):
            assert got == full[first : last + 1], header
        if status == 206:
            assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
            assert ranged == [f"bytes {first}-{last}/{size}"]
        else:
            assert "Content-Range" not in answer.headers and ranged is None


def test_conditions_come_before_the_range_in_rfc_9110s_order(registry):
    """If-Range names this blob's entity tag, strongly, or the range is ignored; a false
    If-Match is a 412 and a true If-None-Match a 304, whatever the Range (section 13.2.2)."""
    layer = manifest(registry, "shell/hello").json()["layers"][0]
    path, size = f"/v2/shell/hello/blobs/{layer['digest']}", layer["size"]
    full = registry.get(path).content
    tag = f'"{layer["digest"].removeprefix("sha256:")}"'
    cases = [
        ({"If-Range": tag}, 206),
        ({"If-Range": "W/" + tag}, 200),  # weak: never for a range
        ({"If-Range": "Sat, 05 Dec 2026 09:00:00 GMT"}, 200),  # a date: a blob has none
        ({"If-Range": '"another"'}, 200),
        ({"If-None-Match": tag}, 304),
        ({"If-None-Match": "W/" + tag}, 304),  # weak comparison
        ({"If-None-Match": '"another"'}, 206),
        ({"If-None-Match": "*"}, 304),
        ({"If-Match": '"another"'}, 412),
        ({"If-Match": '"another"', "If-None-Match": tag}, 412),  # If-Match first
        ({"If-Match": tag}, 206),
        ({"If-Match": "*", "If-Range": tag}, 206),
        ({"If-Match": "W/" + tag}, 412),  # strong comparison
    ]
    for conditions, status in cases:
        answer = registry.get(path, headers={"Range": "bytes=10-109", **conditions})
        assert answer.status_code == status, (conditions, answer.status_code)
        expected = {200: full, 206: full[10:110]}.get(status, b"")
        assert answer.content == expected, conditions
        assert answer.headers["ETag"] == tag, conditions
        if status == 206:
            assert answer.headers["Content-Range"] == f"bytes 10-109/{size}"
        else:
            assert "Content-Range" not in answer.headers, conditions


def test_errors(registry):
    missing = "sha256:" + "0" * 64
    assert_error(registry.get(f"/v2/shell/hello/blobs/{missing}"), 404, "BLOB_UNKNOWN")
    assert_error(registry.get(f"/v2/shell/hello/blobs/{missing}", "HEAD"), 404, "BLOB_UNKNOWN")
    assert_error(registry.get("/v2/shell/hello/blobs/sha256:totallywrong"), 400, "DIGEST_INVALID")
    assert_error(manifest(registry, "shell/hello", "sha256:totallywrong"), 400, "DIGEST_INVALID")
    assert_error(manifest(registry, "shell/hello", missing), 404, "MANIFEST_UNKNOWN")
    assert_error(manifest(registry, "Shell/Hello"), 400, "NAME_INVALID")
    assert_error(manifest(registry, "shell/hello", "no-such-tag"), 404, "MANIFEST_UNKNOWN")
    assert_error(
        registry.get("/v2/shell/hello/manifests/latest", "PUT", data=b"{}"), 405, "UNSUPPORTED"
    )
    assert_error(registry.get("/v2/shell/hello/manifests/latest", "DELETE"), 405, "UNSUPPORTED")
    assert_error(registry.get("/v2/shell/hello/blobs/uploads/", "POST"), 405, "UNSUPPORTED")


def test_unknown_packages_are_all_named(registry):
    error = assert_error(manifest(registry, "hello/nope-one/nope-two"), 422, "MANIFEST_UNKNOWN")
    assert "nope-one" in error["message"] and "nope-two" in error["message"]
    assert error["detail"]["packages"] == ["nope-one", "nope-two"]


def test_an_unknown_package_is_told_the_name_it_may_have_meant(registry):
    error = assert_error(manifest(registry, "requests"), 422, "MANIFEST_UNKNOWN")
    assert "requests (did you mean python3Packages.requests?)" in error["message"]
    assert error["detail"]["suggestions"] == {"requests": ["python3Packages.requests"]}


def test_case_insensitive_attributes_nested_sets_and_digits(registry):
    for name in ("bashinteractive", "python3packages.requests", "1password", "gitminimal"):
        assert manifest(registry, name).status_code == 200, name


def test_a_failing_build_is_a_clear_error_and_is_remembered(registry):
    error = assert_error(manifest(registry, "broken"), 422, "MANIFEST_UNKNOWN")
    assert "broken is broken on purpose" in error["message"]
    assert f"{registry.url}/builds/" in error["message"]
    builds = registry.builds_started()
    assert_error(manifest(registry, "broken"), 422, "MANIFEST_UNKNOWN")
    assert registry.builds_started() == builds, "a failure is remembered, not rebuilt"


def test_an_evaluation_error_is_reported(registry):
    error = assert_error(manifest(registry, "throwing"), 422, "MANIFEST_UNKNOWN")
    assert "this package refuses to evaluate" in error["message"]


def test_nix_timeout_bounds_the_build(registry):
    error = assert_error(manifest(registry, "slow"), 422, "MANIFEST_UNKNOWN")
    assert "timed out" in error["message"]


def test_concurrent_pulls_share_one_build(registry):
    before = registry.builds_started()
    # As many as one address may have waiting for builds (NIXERY_CLIENT_WAITERS: 64 threads / 8).
    results = pull_concurrently(registry, "jq/htop/ripgrep", 8)
    assert all(r.status_code == 200 for r in results)
    assert len({r.headers["Docker-Content-Digest"] for r in results}) == 1
    assert registry.builds_started() == before + 1


def test_web_page(registry):
    page = registry.get("/")
    assert page.status_code == 200 and "docker pull" in page.text


def test_restart_loses_nothing_and_fresh_storage_rebuilds_identical_bytes(
    registry, make_registry, tmp_path
):
    first = make_registry(tmp_path / "a")
    digest = manifest(first, "shell/hello").headers["Docker-Content-Digest"]
    first.stop()
    again = make_registry(tmp_path / "a")
    assert manifest(again, "shell/hello").headers["Docker-Content-Digest"] == digest
    assert first.builds_started() == 1
    assert again.builds_started() == 0, "the restart served what was published"
    assert manifest(registry, "shell/hello").headers["Docker-Content-Digest"] == digest


def test_git_source_tags_give_different_images(make_registry, clients, tmp_path):
    repo = tmp_path / "pkgs"
    subprocess.run(["cp", "-r", str(DEMO), str(repo)], check=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "v1", "--allow-empty")
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "v1")
    git(repo, "tag", "v1")
    default = repo / "default.nix"
    default.write_text(default.read_text().replace("Hello, world!", "Hello from v2!"))
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "v2")
    git(repo, "tag", "v2")
    reg = make_registry(NIXERY_PKGS_REPO=f"file://{repo}")
    clients.trust(reg.host)
    v1 = manifest(reg, "hello", "v1")
    v2 = manifest(reg, "hello", "v2")
    assert v1.status_code == v2.status_code == 200, v1.text + v2.text
    assert v1.headers["Docker-Content-Digest"] != v2.headers["Docker-Content-Digest"]
    latest = manifest(reg, "hello", "latest")
    assert latest.headers["Docker-Content-Digest"] == v2.headers["Docker-Content-Digest"]
    assert_error(manifest(reg, "hello", "v3"), 404, "MANIFEST_UNKNOWN")
    listed = reg.get("/v2/hello/tags/list").json()
    assert listed == {"name": "hello", "tags": ["latest", "main", "v1", "v2"]}
    commit = git(repo, "rev-parse", "v1")
    assert (
        manifest(reg, "hello", commit).headers["Docker-Content-Digest"]
        == v1.headers["Docker-Content-Digest"]
    )
    for tag, greeting in (("v1", "Hello, world!"), ("v2", "Hello from v2!")):
        ran = clients.podman("run", "--rm", f"{reg.host}/hello:{tag}", "hello")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == greeting
