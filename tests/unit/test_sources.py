"""Tests of the package-set sources against real directories, git repositories and HTTP."""

from __future__ import annotations

import http.server
import io
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nixery.config import Env, source_settings
from nixery.errors import ConfigError, SourceUnavailable, UntrustedRevision
from nixery.ports import Source
from nixery.records import FlakeOrigin, Revision
from nixery.sources import channel, open_source
from nixery.sources.channel import ChannelSource
from nixery.sources.checkouts import Checkouts
from nixery.sources.git import GitSource
from nixery.sources.git_command import run_git
from nixery.sources.path import PathSource
from nixery.sources.trust import public_url
from tests.helpers.registries import git


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- PathSource -------------------------------------------------------------------------------


@pytest.fixture
def pkgs(tmp_path: Path) -> Path:
    root = tmp_path / "pkgs"
    (root / "sub").mkdir(parents=True)
    (root / "default.nix").write_text("{ }: { hello = ./sub/hello.nix; }\n")
    (root / "sub" / "hello.nix").write_text("{ }\n")
    return root


def test_path_latest_resolves_and_other_tags_do_not(pkgs: Path) -> None:
    source = PathSource(pkgs)
    revision = source.resolve("latest")
    assert revision is not None
    assert revision.source == "path", "named by its content, not by where it lies"
    assert len(revision.value) == 64
    assert str(revision) == f"path@{revision.value}"
    assert source.resolve("v1") is None
    assert source.checkout(revision) == pkgs
    assert source.tags() == ["latest"]


def test_path_hash_is_stable_and_follows_changes_after_ttl(pkgs: Path) -> None:
    clock = FakeClock()
    source = PathSource(pkgs, ttl=10, clock=clock)
    first = source.resolve("latest")
    assert first is not None
    # A fresh source computes the same hash for the same tree.
    assert PathSource(pkgs).resolve("latest") == first

    (pkgs / "sub" / "hello.nix").write_text("{ changed = true; }\n")
    clock.now += 5
    assert source.resolve("latest") == first, "recomputed before the ttl ran out"
    assert source.checkout(first) == pkgs

    clock.now += 6
    second = source.resolve("latest")
    assert second is not None and second != first
    with pytest.raises(SourceUnavailable):
        source.checkout(first)
    assert source.checkout(second) == pkgs


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "sub" / "hello.nix").chmod(0o755),
        lambda root: (root / "link").symlink_to("sub"),
        lambda root: (root / "empty").mkdir(),
        lambda root: (root / "sub" / "hello.nix").rename(root / "sub" / "other.nix"),
    ],
    ids=["executable-bit", "symlink", "directory", "rename"],
)
def test_path_hash_sees_metadata(pkgs: Path, change: Callable[[Path], object]) -> None:
    before = PathSource(pkgs).resolve("latest")
    change(pkgs)
    assert PathSource(pkgs).resolve("latest") != before


def test_path_hash_ignores_git_metadata(pkgs: Path) -> None:
    before = PathSource(pkgs).resolve("latest")
    (pkgs / ".git").mkdir()
    (pkgs / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert PathSource(pkgs).resolve("latest") == before


def test_path_missing_directory_is_a_source_error_naming_no_path(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable) as raised:
        PathSource(tmp_path / "absent").resolve("latest")
    assert str(tmp_path) not in raised.value.message


def test_a_checkout_that_cannot_be_made_names_no_server_path(tmp_path: Path) -> None:
    """The 503's message says why, not where: the checkouts are the server's business."""
    (tmp_path / "cache").write_text("a file where the checkouts' directory should be")
    checkouts = Checkouts(tmp_path / "cache" / "sources", keep=2, busy=60)
    with pytest.raises(SourceUnavailable) as raised:
        checkouts.get("0" * 40, lambda d: None)
    assert str(tmp_path) not in raised.value.message
    assert raised.value.message.startswith("cannot create the package set's checkout: ")


def test_gits_message_names_the_checkouts_not_their_path(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable) as raised:
        run_git("-C", tmp_path / "no-mirror", "rev-parse", "HEAD", timeout=30)
    assert str(tmp_path) not in raised.value.message
    assert "<checkouts>" in raised.value.message, raised.value.message


def test_the_same_set_in_two_places_is_the_same_revision(pkgs: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(pkgs, tmp_path / "elsewhere" / "set")
    assert PathSource(copy).resolve("latest") == PathSource(pkgs).resolve("latest")


# --- GitSource --------------------------------------------------------------------------------


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Repo:
    path: Path
    url: str
    first: str
    second: str


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = tmp_path / "remote"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch=main")
    first = commit(path, {"default.nix": "1\n"}, "first")
    git(path, "tag", "--annotate", "v1", "-m", "version 1")
    git(path, "branch", "stable")
    second = commit(path, {"default.nix": "2\n", "pkgs/hello.nix": "hello\n"}, "second")
    git(path, "tag", "v2")
    return Repo(path, f"file://{path}", first, second)


def test_git_tags_branches_and_head(repo: Repo, tmp_path: Path) -> None:
    source = GitSource(repo.url, tmp_path / "cache")
    v1, v2 = source.resolve("v1"), source.resolve("v2")
    # The annotated tag resolves to its commit, not to the tag object.
    assert v1 == Revision(f"git:{repo.url}", repo.first)
    assert v2 == Revision(f"git:{repo.url}", repo.second)
    assert str(v2) == f"git:{repo.url}@{repo.second}"
    assert source.resolve("stable") == v1
    assert source.resolve("main") == v2
    assert source.resolve("latest") == v2

    old, new = source.checkout(v1), source.checkout(v2)
    assert old == tmp_path / "cache" / "git" / repo.first
    assert (old / "default.nix").read_text() == "1\n"
    assert not (old / "pkgs").exists()
    assert (new / "default.nix").read_text() == "2\n"
    assert (new / "pkgs" / "hello.nix").read_text() == "hello\n"


def test_git_lists_branches_and_tags_that_are_valid_image_tags(repo: Repo, tmp_path: Path) -> None:
    git(repo.path, "branch", "feature/slash")  # not a valid image tag: not listed
    source = GitSource(repo.url, tmp_path / "cache")
    assert source.tags() == ["latest", "main", "stable", "v1", "v2"]


def test_git_tag_wins_over_branch_of_same_name(repo: Repo, tmp_path: Path) -> None:
    git(repo.path, "tag", "both", repo.first)
    git(repo.path, "branch", "both", repo.second)
    revision = GitSource(repo.url, tmp_path / "cache").resolve("both")
    assert revision is not None and revision.value == repo.first


def test_git_commit_tags(repo: Repo, tmp_path: Path) -> None:
    source = GitSource(repo.url, tmp_path / "cache")
    revision = source.resolve(repo.first)
    assert revision is not None and revision.value == repo.first
    assert source.resolve(repo.first.upper()) == revision
    assert (source.checkout(revision) / "default.nix").read_text() == "1\n"


def test_git_commit_tags_must_be_reachable_from_trusted_refs(repo: Repo, tmp_path: Path) -> None:
    """A pull request's commit is served by the remote like any other, but no branch or tag
    reaches it: its code is never fetched as a checkout, let alone evaluated."""
    git(repo.path, "checkout", "--quiet", "-b", "fork", repo.first)
    fork = commit(repo.path, {"default.nix": 'builtins.readFile "/etc/passwd"\n'}, "evil")
    git(repo.path, "update-ref", "refs/pull/1/head", fork)
    git(repo.path, "checkout", "--quiet", "main")
    git(repo.path, "branch", "--quiet", "-D", "fork")
    source = GitSource(repo.url, tmp_path / "cache")
    with pytest.raises(UntrustedRevision, match=f"{fork}.*no trusted ref"):
        source.resolve(fork)
    assert not list((tmp_path / "cache" / "git").glob("mirror-*")), "nothing was checked out"

    listed = GitSource(repo.url, tmp_path / "cache2", trusted_commits=[fork])
    assert listed.resolve(fork) == Revision(f"git:{repo.url}", fork)
    tags_only = GitSource(repo.url, tmp_path / "cache3", trusted_refs=["refs/tags/v1"])
    assert tags_only.resolve(repo.first) == Revision(f"git:{repo.url}", repo.first)
    with pytest.raises(UntrustedRevision):
        tags_only.resolve(repo.second)


def test_git_unknown_names_are_not_found(repo: Repo, tmp_path: Path) -> None:
    source = GitSource(repo.url, tmp_path / "cache")
    assert source.resolve("v3") is None
    assert source.resolve("0123456789abcdef0123456789abcdef01234567") is None


def test_git_unknown_commits_are_remembered(repo: Repo, tmp_path: Path) -> None:
    """A made-up commit costs one fetch, not one per request (nor one per revision-cache
    lifetime): its answer holds with the remote gone, while another commit's is asked."""
    source = GitSource(repo.url, tmp_path / "cache", ttl=0)
    made_up = "0123456789abcdef0123456789abcdef01234567"
    assert source.resolve(made_up) is None
    shutil.rmtree(repo.path)
    assert source.resolve(made_up) is None
    with pytest.raises(SourceUnavailable):
        source.resolve("1123456789abcdef0123456789abcdef01234567")


def test_git_unreachable_remote_is_a_source_error(tmp_path: Path) -> None:
    source = GitSource(f"file://{tmp_path}/absent", tmp_path / "cache")
    with pytest.raises(SourceUnavailable):
        source.resolve("latest")
    with pytest.raises(SourceUnavailable):
        source.resolve("0123456789abcdef0123456789abcdef01234567")


def test_git_resolution_is_cached_for_ttl(repo: Repo, tmp_path: Path) -> None:
    clock = FakeClock()
    source = GitSource(repo.url, tmp_path / "cache", ttl=60, clock=clock)
    assert source.resolve("main") == source.resolve("latest")
    assert source.resolve("v3") is None
    third = commit(repo.path, {"default.nix": "3\n"}, "third")
    git(repo.path, "tag", "v3")

    clock.now += 59
    main = source.resolve("main")
    assert main is not None and main.value == repo.second
    assert source.resolve("v3") is None

    clock.now += 2
    main = source.resolve("main")
    assert main is not None and main.value == third
    assert source.resolve("latest") == main
    assert source.resolve("v3") == main


def test_git_concurrent_checkouts_share_one_directory(repo: Repo, tmp_path: Path) -> None:
    source = GitSource(repo.url, tmp_path / "cache")
    revision = source.resolve("v2")
    assert revision is not None
    barrier = threading.Barrier(8)
    results: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            results.append(source.checkout(revision))
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 8 and len(set(results)) == 1
    assert (results[0] / "pkgs" / "hello.nix").read_text() == "hello\n"
    entries = sorted(p.name for p in (tmp_path / "cache" / "git").iterdir())
    assert [name for name in entries if not name.startswith("mirror-")] == [repo.second]


def test_git_keeps_the_newest_checkouts_once_no_build_can_use_the_others(
    repo: Repo, tmp_path: Path
) -> None:
    """Beyond the newest ``keep``, a checkout goes once it was last handed out longer ago
    than a build may take (``busy``); the mirror and a crash's leftovers are handled apart."""
    cache = tmp_path / "cache"
    third = commit(repo.path, {"default.nix": "3\n"}, "third")
    commits = [repo.first, repo.second, third]
    busy = GitSource(repo.url, cache, keep=1, busy=3600)
    for c in commits:
        busy.checkout(busy.resolve(c))

    def checkouts() -> list[str]:
        return sorted(p.name for p in (cache / "git").iterdir() if len(p.name) == 40)

    assert checkouts() == sorted(commits), "all three may still be in a build's hands"

    idle = GitSource(repo.url, cache, keep=1, busy=0)
    leftover = cache / "git" / ".tmp-crashed"
    leftover.mkdir()
    assert idle.checkout(idle.resolve(repo.first)) == cache / "git" / repo.first
    assert checkouts() == [repo.first], "the one just handed out stays, however old"
    assert not leftover.exists()
    assert any(p.name.startswith("mirror-") for p in (cache / "git").iterdir())
    assert (idle.checkout(idle.resolve(third)) / "default.nix").read_text() == "3\n"
    assert checkouts() == [third]


def test_git_credentials_stay_out_of_source_ids() -> None:
    assert public_url("https://user:secret@example.org/pkgs.git") == "https://example.org/pkgs.git"
    assert public_url("git@example.org:pkgs.git") == "git@example.org:pkgs.git"


def test_checkout_refuses_revisions_of_another_source(repo: Repo, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        GitSource(repo.url, tmp_path / "cache").checkout(Revision("git:file:///other", "0" * 40))


# --- ChannelSource ----------------------------------------------------------------------------


@dataclass
class Nixpkgs:
    """A stand-in for nixpkgs' repository: channel branches, and a fork's commit that the
    archive host serves all the same, as a public code host serves forks' commits."""

    url: str
    head: str  # nixos-unstable's head: the channel's revision
    older: str  # in nixos-unstable's history
    broken: str  # nixos-24.05's head, whose archive is broken
    master: str  # on master only: merged, but on no channel yet
    fork: str  # reachable only from refs/pull/1/head


@pytest.fixture(scope="module")
def nixpkgs(tmp_path_factory: pytest.TempPathFactory) -> Nixpkgs:
    path = tmp_path_factory.mktemp("nixpkgs")
    git(path, "init", "--quiet", "--initial-branch=master")
    older = commit(path, {"default.nix": "{ }: { }\n"}, "older")
    head = commit(path, {"pkgs/hello.nix": "hello\n"}, "head")
    git(path, "branch", "nixos-unstable")
    broken = commit(path, {"pkgs/broken.nix": "1\n"}, "broken")
    git(path, "branch", "nixos-24.05")
    master = commit(path, {"pkgs/new.nix": "1\n"}, "master")
    git(path, "checkout", "--quiet", "-b", "fork", older)
    fork = commit(path, {"default.nix": '{ }: builtins.readFile "/etc/passwd"\n'}, "evil")
    git(path, "update-ref", "refs/pull/1/head", fork)
    git(path, "checkout", "--quiet", "master")
    git(path, "branch", "--quiet", "-D", "fork")
    return Nixpkgs(f"file://{path}", head, older, broken, master, fork)


def tarball(members: dict[str, str | None], commit: str) -> bytes:
    """A gzipped tarball; None marks a directory."""
    buffer = io.BytesIO()
    # Like GitHub's, with a pax global header naming the commit.
    with tarfile.open(
        fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": commit}
    ) as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            if text is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = text.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Server:
    url: str
    nixpkgs: Nixpkgs
    requests: list[tuple[str, str]] = field(default_factory=list)
    failing: bool = False
    files: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture
def server(nixpkgs: Nixpkgs) -> Iterator[Server]:
    state = Server(url="", nixpkgs=nixpkgs)
    state.files = {
        "/channels/nixos-unstable/git-revision": f"{nixpkgs.head}\n".encode(),
        "/channels/nixos-24.05/git-revision": f"{nixpkgs.broken}\n".encode(),
        f"/codeload/{nixpkgs.broken}.tar.gz": tarball(
            {"one/default.nix": "1\n", "two/x": "2\n"}, nixpkgs.broken
        ),
    }
    for commit in (nixpkgs.head, nixpkgs.older, nixpkgs.master, nixpkgs.fork):
        top = f"nixpkgs-{commit}"
        state.files[f"/codeload/{commit}.tar.gz"] = tarball(
            {f"{top}/": None, f"{top}/default.nix": "{ }: { }\n", f"{top}/pkgs/hello.nix": "hi\n"},
            commit,
        )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.command, self.path))
            if state.failing:
                self.send_error(500)
                return
            # Like GitHub, archive URLs redirect to another host.
            if self.path.startswith("/archive/"):
                self.send_response(302)
                self.send_header("Location", self.path.replace("/archive/", "/codeload/"))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def channel_source(
    server: Server,
    tmp_path: Path,
    channel: str = "nixos-unstable",
    ttl: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
    trusted_refs: Sequence[str] = channel.TRUSTED_REFS,
    trusted_commits: Sequence[str] = (),
) -> ChannelSource:
    return ChannelSource(
        channel,
        tmp_path / "cache",
        channel_url=f"{server.url}/channels",
        archive_url=f"{server.url}/archive",
        ttl=ttl,
        clock=clock,
        timeout=5,
        repo_url=server.nixpkgs.url,
        trusted_refs=trusted_refs,
        trusted_commits=trusted_commits,
    )


def test_channel_latest_resolves_and_checks_out(server: Server, tmp_path: Path) -> None:
    head = server.nixpkgs.head
    source = channel_source(server, tmp_path)
    revision = source.resolve("latest")
    assert revision == Revision(f"nixpkgs:{server.url}/archive", head)
    assert source.resolve("nixos-unstable") == revision

    path = source.checkout(revision)
    assert path == tmp_path / "cache" / "channel" / head
    assert sorted(p.name for p in path.iterdir()) == ["default.nix", "pkgs"]
    assert (path / "pkgs" / "hello.nix").read_text() == "hi\n"
    downloads = len(server.requests)
    assert source.checkout(revision) == path
    assert len(server.requests) == downloads
    assert sorted(p.name for p in path.parent.iterdir()) == [head]


def test_channel_commit_tags_must_be_in_a_channels_history(server: Server, tmp_path: Path) -> None:
    """The archive host serves every commit, a fork's too: only the channel branches' history
    says which ones are nixpkgs'. Nothing of an untrusted commit is downloaded."""
    nixpkgs = server.nixpkgs
    source = channel_source(server, tmp_path)
    for trusted in (nixpkgs.head, nixpkgs.older, nixpkgs.broken, nixpkgs.head.upper()):
        revision = source.resolve(trusted)
        assert revision is not None and revision.value == trusted.lower()
    for untrusted in (nixpkgs.fork, nixpkgs.master):
        with pytest.raises(UntrustedRevision, match=f"{untrusted}.*no channel branch"):
            source.resolve(untrusted)
    assert source.resolve("0123456789abcdef0123456789abcdef01234567") is None
    assert server.requests == []

    listed = channel_source(server, tmp_path / "2", trusted_commits=[nixpkgs.fork.upper()])
    assert listed.resolve(nixpkgs.fork) == Revision(f"nixpkgs:{server.url}/archive", nixpkgs.fork)
    only_stable = channel_source(server, tmp_path / "3", trusted_refs=["refs/heads/nixos-24.05"])
    assert only_stable.resolve(nixpkgs.older) is not None
    with pytest.raises(UntrustedRevision):
        only_stable.resolve(nixpkgs.master)


def test_channel_history_unreachable_is_a_source_error(server: Server, tmp_path: Path) -> None:
    server.nixpkgs = Nixpkgs(f"file://{tmp_path}/absent", *["0" * 40] * 5)
    with pytest.raises(SourceUnavailable):
        channel_source(server, tmp_path).resolve("1" * 40)


def test_channel_unknown_channel_is_not_found(server: Server, tmp_path: Path) -> None:
    assert channel_source(server, tmp_path).resolve("nixos-99.99") is None


def test_channel_pinned_commit_needs_no_request(server: Server, tmp_path: Path) -> None:
    pinned = server.nixpkgs.master  # the operator's own pin is trusted as it is
    revision = channel_source(server, tmp_path, channel=pinned).resolve("latest")
    assert revision is not None and revision.value == pinned
    assert server.requests == []


def test_channel_server_errors_are_source_errors_and_not_cached(
    server: Server, tmp_path: Path
) -> None:
    source = channel_source(server, tmp_path)
    server.failing = True
    with pytest.raises(SourceUnavailable):
        source.resolve("latest")
    server.failing = False
    revision = source.resolve("latest")
    assert revision is not None and revision.value == server.nixpkgs.head


def test_channel_resolution_is_cached_for_ttl(server: Server, tmp_path: Path) -> None:
    clock = FakeClock()
    source = channel_source(server, tmp_path, ttl=300, clock=clock)
    assert source.resolve("nixos-25.05") is None
    server.files["/channels/nixos-25.05/git-revision"] = f"{server.nixpkgs.head}\n".encode()
    clock.now += 299
    assert source.resolve("nixos-25.05") is None
    clock.now += 2
    assert source.resolve("nixos-25.05") is not None


def test_channel_bad_names_never_reach_the_server(server: Server, tmp_path: Path) -> None:
    source = channel_source(server, tmp_path)
    for tag in ("../secret", "a/b", "x?y=1", ".hidden", "-rf"):
        assert source.resolve(tag) is None
    assert server.requests == []
    with pytest.raises(ConfigError, match="NIXERY_CHANNEL"):
        channel_source(server, tmp_path, channel="../etc")


def test_channel_refuses_urls_that_are_not_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NIXERY_CHANNEL_URL"):
        ChannelSource("nixos-unstable", tmp_path, channel_url="file:///etc")
    with pytest.raises(ConfigError, match="NIXERY_ARCHIVE_URL"):
        ChannelSource("nixos-unstable", tmp_path, archive_url="ftp://example.org/archive")


def test_git_refuses_urls_read_as_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NIXERY_PKGS_REPO"):
        GitSource("--upload-pack=evil", tmp_path)


def test_channel_bad_archive_leaves_nothing_behind(server: Server, tmp_path: Path) -> None:
    source = channel_source(server, tmp_path)
    revision = source.resolve("nixos-24.05")
    assert revision is not None
    with pytest.raises(SourceUnavailable):
        source.checkout(revision)
    left = [p.name for p in (tmp_path / "cache" / "channel").iterdir()]
    assert [name for name in left if not name.startswith("history-")] == []


def test_channel_garbage_revision_is_a_source_error(server: Server, tmp_path: Path) -> None:
    server.files["/channels/odd/git-revision"] = b"<html>not a commit</html>"
    with pytest.raises(SourceUnavailable):
        channel_source(server, tmp_path).resolve("odd")


# --- open_source ------------------------------------------------------------------------------


def open_with(tmp_path: Path, **env: str) -> Source:
    """The source an environment names, read as every role reads it."""
    return open_source(source_settings(Env(env), tmp_path))


def test_open_source_picks_the_configured_kind(pkgs: Path, tmp_path: Path) -> None:
    assert isinstance(open_with(tmp_path, NIXERY_PKGS_PATH=str(pkgs)), PathSource)
    repo = open_with(tmp_path, NIXERY_PKGS_REPO="file:///x", NIXERY_CHANNEL="")
    assert isinstance(repo, GitSource)
    assert isinstance(open_with(tmp_path, NIXERY_CHANNEL="nixos-24.05"), ChannelSource)
    assert isinstance(open_with(tmp_path), ChannelSource)


def test_several_sources_are_refused_naming_them(pkgs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"NIXERY_CHANNEL, .*NIXERY_PKGS_PATH"):
        open_with(tmp_path, NIXERY_PKGS_PATH=str(pkgs), NIXERY_CHANNEL="nixos-unstable")


def test_bad_source_settings_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NIXERY_PKGS_PATH"):
        open_with(tmp_path, NIXERY_PKGS_PATH=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="NIXERY_PKGS_REPO"):
        open_with(tmp_path, NIXERY_PKGS_REPO="--upload-pack=evil")
    with pytest.raises(ConfigError, match="NIXERY_CHANNEL"):
        open_with(tmp_path, NIXERY_CHANNEL="../etc")
    with pytest.raises(ConfigError, match="NIXERY_CHANNEL_URL"):
        open_with(tmp_path, NIXERY_CHANNEL_URL="file:///etc")


def test_open_source_passes_ttl(pkgs: Path, tmp_path: Path) -> None:
    source = open_with(tmp_path, NIXERY_PKGS_PATH=str(pkgs), NIXERY_REVISION_TTL="0")
    first = source.resolve("latest")
    (pkgs / "default.nix").write_text("{ }: { }\n")
    assert source.resolve("latest") != first


def test_a_flake_is_read_as_one_unless_turned_off(tmp_path: Path) -> None:
    """A path source says how a flake of its knows itself; under NIXERY_PKGS_FLAKE=off it
    reads default.nix whatever the tree holds, and needs one."""
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    source = open_with(tmp_path, NIXERY_PKGS_PATH=str(flake))
    revision = source.resolve("latest")
    assert revision is not None
    assert source.flake_origin(revision) == FlakeOrigin(revision.value, None, 0)
    with pytest.raises(ConfigError, match=r"NIXERY_PKGS_PATH: no default\.nix in"):
        open_with(tmp_path, NIXERY_PKGS_PATH=str(flake), NIXERY_PKGS_FLAKE="off")
    (flake / "default.nix").write_text("{ ... }: { }\n")
    off = open_with(tmp_path, NIXERY_PKGS_PATH=str(flake), NIXERY_PKGS_FLAKE="off")
    revision = off.resolve("latest")
    assert revision is not None and off.flake_origin(revision) is None
    with pytest.raises(ConfigError, match="NIXERY_PKGS_FLAKE must be auto or off"):
        open_with(tmp_path, NIXERY_PKGS_PATH=str(flake), NIXERY_PKGS_FLAKE="yes")


def test_a_channel_never_reads_a_flake(tmp_path: Path) -> None:
    source = open_with(tmp_path, NIXERY_CHANNEL="nixos-24.05")
    assert source.flake_origin(Revision("nixpkgs:https://example.org", "0" * 40)) is None
