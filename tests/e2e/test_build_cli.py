"""`nixery build`: the image a registry serves for a name, written to a file without a
server, loaded and run by podman; its digests are the registry's, in both modes."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import tarfile

import pytest

from tests.helpers import disk_faults
from tests.helpers.protocol import OCI, OCI_INDEX
from tests.helpers.registries import NIXERY

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["local", "gcp"])
def target(request):
    return request.getfixturevalue({"local": "registry", "gcp": "gcp_registry"}[request.param])


def nixery_build(
    registry, *args: str, text: bool = True, cwd=None, user: str | None = None, **streams
) -> subprocess.CompletedProcess:
    """`nixery build` with the local registry's package set and Nix settings, and storage of
    its own (a temporary directory): nothing is shared with a running registry. ``user``: a
    uid to run as (as the tests run as root, who may search any directory)."""
    env = {k: v for k, v in registry.env.items() if k not in ("STORAGE_PATH", "PORT")}
    as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    streams = streams or {"capture_output": True}
    return subprocess.run([*as_user, str(NIXERY), "build", *args], env=env, text=text,
                          timeout=600, check=False, cwd=cwd, **streams)  # fmt: skip


def served(target, name: str) -> dict:
    response = target.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})
    assert response.status_code == 200, response.text
    return {"manifest": response.headers["Docker-Content-Digest"], **response.json()}


@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
def test_build_load_and_run_with_the_registrys_digests(registry, target, clients, tmp_path, kind):
    out = tmp_path / "hello.tar"
    built = nixery_build(registry, "shell/hello", "-o", str(out), "--format", kind)
    assert built.returncode == 0, built.stderr
    assert "build " in built.stderr and "published" in built.stderr, "progress is shown"
    expected = served(target, "shell/hello")
    with tarfile.open(out) as tar:
        if kind == "oci":
            index = json.load(tar.extractfile("index.json"))
            assert index["manifests"][0]["digest"] == expected["manifest"]
        else:
            [entry] = json.load(tar.extractfile("manifest.json"))
            assert entry["Config"] == expected["config"]["digest"].split(":")[1] + ".json"
    loaded = clients.podman("load", "-i", str(out))
    assert loaded.returncode == 0, loaded.stderr
    assert "localhost/shell/hello:latest" in loaded.stdout
    image_id = clients.podman("image", "inspect", "--format", "{{.Id}}", "shell/hello")
    assert "sha256:" + image_id.stdout.strip() == expected["config"]["digest"]
    ran = clients.podman("run", "--rm", "localhost/shell/hello:latest", "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "Hello, world!"
    clients.podman("rmi", "-f", "localhost/shell/hello:latest")


def test_the_same_name_gives_the_same_file(registry, tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    for out in (a, b):
        assert nixery_build(registry, "hello:latest", "-o", str(out)).returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_bad_input_is_a_clear_error(registry, tmp_path):
    out = tmp_path / "x.tar"
    for args, says in (
        (["Bad/Name", "-o", str(out)], "invalid repository name"),
        (["nosuchpackage", "-o", str(out)], "nosuchpackage"),
        (["broken", "-o", str(out)], "broken is broken on purpose"),
        (["hello:no-such-tag", "-o", str(out)], "unknown tag"),
    ):
        failed = nixery_build(registry, *args)
        assert failed.returncode != 0 and says in failed.stderr, (args, failed.stderr)
        assert "Traceback" not in failed.stderr
    assert not out.exists()


def test_a_multi_platform_oci_archive_holds_the_registrys_index(multi_registry, clients, tmp_path):
    out = tmp_path / "multi.tar"
    built = nixery_build(multi_registry, "shell/hello", "-o", str(out))
    assert built.returncode == 0, built.stderr
    response = multi_registry.get(
        "/v2/shell/hello/manifests/latest", headers={"Accept": f"{OCI_INDEX}, {OCI}"}
    )
    with tarfile.open(out) as tar:
        [entry] = json.load(tar.extractfile("index.json"))["manifests"]
        assert entry["mediaType"] == OCI_INDEX
        assert entry["digest"] == response.headers["Docker-Content-Digest"]
        for child in response.json()["manifests"]:
            tar.getmember(f"blobs/sha256/{child['digest'][7:]}")
    assert clients.podman("load", "-i", str(out)).returncode == 0
    image = "localhost/shell/hello:latest"
    arch = clients.podman("image", "inspect", "--format", "{{.Architecture}}", image)
    assert arch.stdout.strip() == "amd64", "podman takes its own platform's image"
    ran = clients.podman("run", "--rm", image, "hello")
    assert ran.stdout.strip() == "Hello, world!", ran.stderr
    clients.podman("rmi", "-f", image)


def test_dash_writes_the_archive_to_stdout_and_no_file(registry, tmp_path):
    (tmp_path / "work").mkdir()
    piped = nixery_build(registry, "hello", "-o", "-", text=False, cwd=tmp_path / "work")
    assert piped.returncode == 0, piped.stderr
    assert list((tmp_path / "work").iterdir()) == [], "no file named -"
    assert nixery_build(registry, "hello", "-o", str(tmp_path / "hello.tar")).returncode == 0
    assert piped.stdout == (tmp_path / "hello.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(piped.stdout)) as tar:
        assert "index.json" in tar.getnames()


def test_an_output_that_must_not_or_cannot_be_written_is_refused_before_the_build(
    registry, tmp_path
):
    """A clear line, exit status 2, no traceback, no build, and nothing replaced: never a
    symlink, a device, a pipe or a directory, nor the registry's own storage."""
    victim = tmp_path / "victim"
    victim.write_text("kept")
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    storage = tmp_path / "storage"
    (storage / "blobs").mkdir(parents=True)
    (storage / "state.sqlite3").write_text("the registry's state")
    (tmp_path / "ro").mkdir()
    cases = [
        ("", "empty"),
        (str(tmp_path / "missing" / "x.tar"), "does not exist"),
        (str(victim / "x.tar"), "is not a directory"),
        (str(tmp_path / "dir"), "is not a regular file"),
        (str(tmp_path / "link"), "is not a regular file"),
        ("/dev/null", "is not a regular file"),
        (str(tmp_path / "fifo"), "is not a regular file"),
        (str(tmp_path / ("x" * 256)), "longer than 255 bytes"),
        (str(tmp_path / ("d" * 300) / "x.tar"), "file name too long"),
        (str(tmp_path / ("a/" * 2100)) + "x.tar", "longer than the system takes"),
        (str(tmp_path / "dir") + "/", "names a directory"),
        (str(storage / "state.sqlite3"), "state database"),
        (str(storage / "state.sqlite3-wal"), "state database"),
        (str(storage / "blobs" / "x.tar"), "storage (STORAGE_PATH)"),
        (str(tmp_path / "dir" / ".." / "storage" / "x.tar"), "storage (STORAGE_PATH)"),
    ]
    with disk_faults.read_only(tmp_path / "ro"):
        cases.append((str(tmp_path / "ro" / "x.tar"), "the disk is read-only"))
        for output, says in cases:
            args = ["hello", "-o", output, "--storage-path", str(storage)]
            refused = nixery_build(registry, *args)
            assert refused.returncode == 2, (output, refused.stderr)
            assert says in refused.stderr, (output, refused.stderr)
            assert "building" not in refused.stderr, "refused before the build"
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert list((tmp_path / "ro").iterdir()) == []
    assert victim.read_text() == "kept" and (tmp_path / "link").is_symlink()
    assert (storage / "state.sqlite3").read_text() == "the registry's state"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == []


@pytest.fixture
def searchable(tmp_path_factory):
    """A directory another user may reach (pytest's own are root's alone)."""
    place = tmp_path_factory.mktemp("shared")
    for path in (place, *place.parents):
        if path == path.parent or path.stat().st_mode & 0o005 == 0o005:
            break
        path.chmod(path.stat().st_mode | 0o005)
    return place


def test_a_place_another_user_may_not_reach_is_one_line_not_a_traceback(registry, searchable):
    """Run as nobody: a directory it may not search, one whose parent it may not search, and
    one it may not write, each a line and exit status 2 before the build."""
    (searchable / "locked" / "inner").mkdir(parents=True, mode=0o700)
    (searchable / "locked").chmod(0o700)
    (searchable / "closed").mkdir(mode=0o555)
    (searchable / "closed" / "old.tar").write_text("kept")
    cases = [
        searchable / "locked" / "x.tar",  # lstat: EACCES
        searchable / "locked" / "inner" / "x.tar",  # the parent's parent: EACCES
        searchable / "closed" / "x.tar",  # no write permission
        searchable / "closed" / "old.tar",
    ]
    for output in cases:
        refused = nixery_build(registry, "hello", "-o", str(output), user="65534")
        assert refused.returncode == 2, (output, refused.stderr)
        said = f"nixery build: cannot write {str(output)!r}: permission denied"
        assert refused.stderr.strip() == said
    assert (searchable / "closed" / "old.tar").read_text() == "kept"


def test_dash_with_stdout_closed_or_a_terminal_is_refused(registry, tmp_path):
    closed = nixery_build(registry, "hello", "-o", "-", stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))  # fmt: skip
    assert closed.returncode == 2, closed.stderr
    assert closed.stderr.strip() == "nixery build: stdout is closed: redirect it, or name a file"
    main, terminal = pty.openpty()
    try:
        typed = nixery_build(registry, "hello", "-o", "-", stdout=terminal, stderr=subprocess.PIPE)
    finally:
        os.close(main)
        os.close(terminal)
    assert typed.returncode == 2, typed.stderr
    assert "will not write an archive to a terminal" in typed.stderr
    assert len(typed.stderr.strip().splitlines()) == 1


def test_a_directory_symlink_re_pointed_during_the_build_does_not_move_the_output(
    registry, tmp_path
):
    """The directory is opened before the build and the rename made relative to it: a
    symlink on the way re-pointed at the storage meanwhile changes nothing."""
    chosen, storage = tmp_path / "chosen", tmp_path / "storage"
    chosen.mkdir()
    storage.mkdir()
    (tmp_path / "link").symlink_to(chosen)
    env = {k: v for k, v in registry.env.items() if k not in ("STORAGE_PATH", "PORT")}
    args = ["hello", "-o", str(tmp_path / "link" / "hello.tar"), "--storage-path", str(storage)]
    with subprocess.Popen([str(NIXERY), "build", *args], env=env, stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True) as build:  # fmt: skip
        assert build.stderr is not None
        said = [build.stderr.readline()]
        while said[-1] and not said[-1].startswith("nixery build: building"):
            said.append(build.stderr.readline())
        assert said[-1], "".join(said)
        (tmp_path / "new-link").symlink_to(storage)
        (tmp_path / "new-link").replace(tmp_path / "link")  # atomically, as a deploy would
        said += build.stderr.readlines()
    assert build.returncode == 0, "".join(said)
    assert (chosen / "hello.tar").is_file() and tarfile.is_tarfile(chosen / "hello.tar")
    assert not (storage / "hello.tar").exists()
    assert [p.name for p in chosen.iterdir()] == ["hello.tar"], "no temporary file left"
