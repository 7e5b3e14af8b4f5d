"""Only trusted code is evaluated: attacks on the package source and hostile input, end to end.

A commit in an image tag would be evaluated, so a commit from a fork or a pull request (which
public code hosts serve under the parent repository's URL) must be refused, whatever the
archive host serves; and should a trusted set turn hostile, its evaluation still cannot read
the server's files. Names, tags and paths with Nix syntax never reach Nix as code.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.registries import DEMO, OCI, Registry, git

pytestmark = pytest.mark.e2e

# A package that copies a server file into its output, and so into the image.
PWN = """args: let demo = import ./demo.nix args; in demo // {
  pwn = derivation {
    name = "pwn"; system = "x86_64-linux"; builder = "${demo.busybox}/bin/sh";
    args = [ "-c" "echo \\"$secret\\" > $out" ];
    secret = builtins.readFile "/etc/hostname";
  };
}
"""


@dataclass
class Nixpkgs:
    """The demo set as nixpkgs' repository: branch nixos-unstable, and a pull request whose
    commit adds `pwn`."""

    path: Path
    url: str
    commit: str
    fork: str


@pytest.fixture
def nixpkgs(tmp_path: Path) -> Nixpkgs:
    repo = tmp_path / "nixpkgs"
    shutil.copytree(DEMO, repo)
    git(repo, "init", "-q", "-b", "master")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "demo")
    git(repo, "branch", "nixos-unstable")
    commit = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "pull-1")
    (repo / "default.nix").rename(repo / "demo.nix")
    (repo / "default.nix").write_text(PWN)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "add a useful package")
    fork = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/pull/1/head", fork)
    git(repo, "checkout", "-q", "master")
    git(repo, "branch", "-q", "-D", "pull-1")
    return Nixpkgs(repo, f"file://{repo}", commit, fork)


@dataclass
class ChannelHost:
    url: str
    requested: list[str] = field(default_factory=list)


@pytest.fixture
def channel_host(nixpkgs: Nixpkgs) -> Iterator[ChannelHost]:
    """channels.nixos.org and GitHub's archive host on loopback: the archive host serves
    every commit of the repository, the pull request's too, as GitHub does."""
    routes = {"/nixos-unstable/git-revision": nixpkgs.commit.encode()}
    for commit in (nixpkgs.commit, nixpkgs.fork):
        routes[f"/{commit}.tar.gz"] = subprocess.run(
            ["git", "-C", str(nixpkgs.path), "archive", "--format=tar.gz",
             f"--prefix=nixpkgs-{commit}/", commit],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
    host = ChannelHost("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.requested.append(self.path)
            body = routes.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield host
    server.shutdown()
    server.server_close()


def manifest(reg: Registry, name: str, ref: str = "latest"):
    return reg.get(f"/v2/{name}/manifests/{ref}", headers={"Accept": OCI})


def error_of(response) -> dict:
    assert response.headers["Content-Type"] == "application/json", response.text
    error: dict = response.json()["errors"][0]
    return error


def test_channel_commits_are_built_only_from_the_channels_history(
    make_registry, nixpkgs, channel_host
):
    reg = make_registry(
        NIXERY_CHANNEL="nixos-unstable", NIXERY_CHANNEL_URL=channel_host.url,
        NIXERY_ARCHIVE_URL=channel_host.url, NIXERY_CHANNEL_REPO=nixpkgs.url,
    )  # fmt: skip
    latest = manifest(reg, "shell/hello")
    assert latest.status_code == 200, latest.text
    by_commit = manifest(reg, "shell/hello", nixpkgs.commit)
    assert by_commit.headers["Docker-Content-Digest"] == latest.headers["Docker-Content-Digest"]
    assert reg.builds_started() == 1, "the channel and its commit are one revision"
    assert manifest(reg, "shell/hello", "nixos-00.00").status_code == 404

    pwned = manifest(reg, "pwn", nixpkgs.fork)
    assert pwned.status_code == 404
    error = error_of(pwned)
    assert error["code"] == "MANIFEST_UNKNOWN"
    assert f"commit {nixpkgs.fork} is not trusted" in error["message"]
    assert f"/{nixpkgs.fork}.tar.gz" not in channel_host.requested, "nothing of it was fetched"
    assert reg.builds_started() == 1


def test_git_commits_are_built_only_from_the_repositorys_branches_and_tags(make_registry, nixpkgs):
    reg = make_registry(NIXERY_PKGS_REPO=nixpkgs.url)
    assert manifest(reg, "hello", nixpkgs.commit).status_code == 200
    pwned = manifest(reg, "pwn", nixpkgs.fork)
    assert pwned.status_code == 404
    assert "no trusted ref of the package repository" in error_of(pwned)["message"]
    assert reg.builds_started() == 1


def test_a_trusted_set_gone_hostile_still_cannot_read_the_server(make_registry, nixpkgs):
    """The operator lists the pull request's commit: it is built, but its evaluation is
    restricted, so the server file it reads is refused rather than put in an image."""
    reg = make_registry(NIXERY_PKGS_REPO=nixpkgs.url, NIXERY_TRUSTED_COMMITS=nixpkgs.fork)
    pwned = manifest(reg, "pwn", nixpkgs.fork)
    assert pwned.status_code != 200
    assert "forbidden in restricted mode" in error_of(pwned)["message"]
    assert manifest(reg, "hello", nixpkgs.fork).status_code == 200, "the rest of it builds"


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="/:")


# Names, tags and paths with Nix syntax, path tricks and control characters: each is refused
# by the protocol's grammar (4xx) or is an unknown package, and nothing is built.
HOSTILE_NAMES = [
    '${builtins.readFile "/etc/passwd"}', "hello${x}", '"; abort "x', "../../etc/passwd",
    "hello/../../etc", "<nixpkgs>", "hello\nabort", "hello/./x", "a" * 300,
    "%2e%2e/%2e%2e/etc", "hello;rm", "Hello", "hello/", "/hello", "hello//x", "__functor",
]  # fmt: skip
HOSTILE_TAGS = [
    '${builtins.readFile "/etc/passwd"}', "..", "../../etc", "latest;rm -rf", "-rf",
    "$(id)", "`id`", "a" * 200, "latest\n", "--option", "0" * 39 + "g",
]  # fmt: skip


def raw_get(reg: Registry, path: str) -> tuple[int, bytes]:
    """A GET of exactly this path: no client normalises its dot segments first."""
    conn = http.client.HTTPConnection(reg.host, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_hostile_names_and_tags_never_reach_nix_as_code(make_registry):
    reg = make_registry()
    for name in HOSTILE_NAMES:
        status, body = raw_get(reg, f"/v2/{quoted(name)}/manifests/latest")
        assert 400 <= status < 500, (name, status, body)
    for tag in HOSTILE_TAGS:
        status, body = raw_get(reg, f"/v2/hello/manifests/{quoted(tag)}")
        assert 400 <= status < 500, (tag, status, body)
    assert reg.builds_started() == 0
    # Names of Nix builtins pass the grammar: each is looked up as data, and is unknown.
    builtin_names = ("builtins", "builtins.readfile", "import", "derivation", "abort")
    for name in builtin_names:
        answer = manifest(reg, name)
        assert answer.status_code == 422, (name, answer.text)
        assert error_of(answer)["detail"]["packages"] == [name]
    assert reg.builds_started() == len(builtin_names)
