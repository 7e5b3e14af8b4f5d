"""What the registry reads of a flake itself: its lock's inputs as URLs, and the locked
reference pure evaluation gets. (Nix reads the rest: tests/e2e/test_flakes.py.)"""

import json
from pathlib import Path

import pytest

from nixery.errors import BuildFailed
from nixery.nix.flakes import (
    check_local,
    check_pinned,
    input_url,
    locked_ref,
    read_lock,
    scrub,
    unpinned_deeper,
)
from nixery.records import FlakeInput, FlakeOrigin

REV = "0123456789abcdef0123456789abcdef01234567"
HASH = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


@pytest.mark.parametrize(
    ("locked", "url"),
    [
        ({"type": "github", "owner": "NixOS", "repo": "nixpkgs", "rev": REV},
         f"github:NixOS/nixpkgs/{REV}"),
        ({"type": "git", "url": "https://user:secret@example.org/r.git", "rev": REV,
          "ref": "main", "revCount": 3, "lastModified": 1},
         f"git+https://example.org/r.git?ref=main&rev={REV}"),
        ({"type": "tarball", "url": "https://example.org/x.tar.gz"},
         "tarball+https://example.org/x.tar.gz"),
        ({"type": "tarball", "url": "https://example.org/x.tar.gz?access_token=secret#f"},
         "tarball+https://example.org/x.tar.gz"),
        ({"type": "git", "url": "https://example.org/r.git?token=secret", "rev": REV,
          "ref": "main", "dir": "sub", "token": "secret", "lastModified": 1},
         f"git+https://example.org/r.git?dir=sub&ref=main&rev={REV}"),
        ({"type": "path", "path": "/nix/store/x-source"}, "path:/nix/store/x-source"),
    ],
)  # fmt: skip
def test_locked_inputs_as_urls_without_credentials(locked, url):
    assert input_url({**locked, "narHash": HASH}) == url


def test_the_lock_is_read_node_by_node(tmp_path: Path):
    lock = {
        "root": "root",
        "version": 7,
        "nodes": {
            "root": {"inputs": {"nixpkgs": "nixpkgs"}},
            "nixpkgs": {"locked": {"type": "github", "owner": "o", "repo": "r", "rev": REV,
                                   "narHash": HASH}},
        },
    }  # fmt: skip
    (tmp_path / "flake.lock").write_text(json.dumps(lock))
    read = read_lock(tmp_path, "sha256-self")
    assert read.nar_hash == "sha256-self"
    assert read.inputs == (FlakeInput("nixpkgs", f"github:o/r/{REV}", HASH),)
    assert read_lock(tmp_path / "none", "h").inputs == (), "a flake without inputs needs no lock"
    (tmp_path / "flake.lock").write_text("{")
    with pytest.raises(BuildFailed, match=r"flake\.lock cannot be read"):
        read_lock(tmp_path, "h")


def test_unpinned_inputs_are_refused_naming_the_lock():
    check_pinned(False, [])
    with pytest.raises(BuildFailed, match=r"the flake has no flake\.lock to pin its inputs"):
        check_pinned(False, ["nixpkgs"])
    with pytest.raises(BuildFailed, match=r"flake\.lock does not pin the flake.s inputs a, b"):
        check_pinned(True, ["a", "b"])


def test_the_locked_reference_carries_the_commit_and_its_time():
    assert locked_ref("/nix/store/x-source", HASH, FlakeOrigin(REV, REV, 7)) == (
        "path:/nix/store/x-source?narHash=sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D"
        f"&lastModified=7&rev={REV}"
    )
    assert "rev=" not in locked_ref("/nix/store/x-source", HASH, FlakeOrigin("h", None, 0))


@pytest.mark.parametrize(
    "said",
    [  # Nix 2.8, then 2.26 (its location on a line of its own)
        "error: 'outputs' at /nix/store/x-source/flake.nix:2:13 called without required "
        "argument 'bb'",
        "error: function 'outputs' called without required argument 'bb'\n"
        "       at /nix/store/x-source/flake.nix:2:13:",
    ],
)
def test_an_input_of_an_input_the_lock_lacks_names_the_lock(said):
    explained = unpinned_deeper(BuildFailed(f"evaluating the package set failed: {said}", said))
    assert str(explained).startswith("flake.lock does not pin the input bb of one of the flake's")
    assert explained.log_tail == said
    other = BuildFailed("evaluating the package set failed: error: attribute 'x' missing")
    assert unpinned_deeper(other) is other


@pytest.mark.parametrize(
    "locked",
    [
        {"type": "path", "path": "/etc/hostname"},
        {"type": "path", "path": "ALLOWED/../etc"},
        {"type": "path", "path": "../up"},
        {"type": "path", "path": "ALLOWED/link/hostname"},  # a symbolic link leading out
        {"type": "git", "url": "git+file:///srv/other"},
        {"type": "git", "url": "file:///srv/other", "rev": REV},
        {"type": "git", "url": "/srv/other", "rev": REV},
        {"type": "tarball", "url": "tarball+file:///srv/x.tar.gz"},
        {"type": "file", "url": "file+file:///etc/shadow"},
        {"type": "mercurial", "url": "hg+file:///srv/hg"},
        {"type": "git", "url": "https://example.org/r.git", "path": "/srv/other"},
        {"type": "path", "path": "ALLOWED-sibling/x"},
    ],
)  # fmt: skip
def test_a_locked_input_on_the_host_outside_the_allowed_directories_is_refused(
    tmp_path: Path, locked: dict[str, str]
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    pinned = {k: v.replace("ALLOWED", str(allowed)) for k, v in locked.items()}
    with pytest.raises(BuildFailed, match=r"flake\.lock pins the input x to a path on the reg"):
        check_local("x", pinned, [allowed])


@pytest.mark.parametrize(
    "locked",
    [
        {"type": "path", "path": "ALLOWED/repo"},
        {"type": "path", "path": "./sub"},  # inside the flake
        {"type": "git", "url": "git+file://ALLOWED/repo", "rev": REV},
        {"type": "git", "url": "https://example.org/r.git", "rev": REV},
        {"type": "github", "owner": "o", "repo": "r", "rev": REV},
        {"type": "tarball", "url": "https://example.org/x.tar.gz"},
    ],
)  # fmt: skip
def test_remote_inputs_and_those_inside_the_allowed_directories_pass(
    tmp_path: Path, locked: dict[str, str]
) -> None:
    pinned = {k: v.replace("ALLOWED", str(tmp_path)) for k, v in locked.items()}
    check_local("x", pinned, [tmp_path])


def test_a_flakes_errors_name_no_hash_and_no_host_path() -> None:
    said = (
        "error: NAR hash mismatch in input 'path:/srv/secret?narHash=sha256-AAAA%3D' "
        "(/nix/store/g781jd15fy84qgd57fhsxvk0kwxp8xbz-source), expected 'sha256-AAAA=', "
        f"got '{HASH}' at /nix/store/0123456789abcdfghijklmnpqrsvwxyz-source/flake.nix:3:1 "
        "from git+file:///srv/repo or https://example.org/a/b"
    )
    assert scrub([said]) == [
        "error: NAR hash mismatch in input '<host path>?narHash=<hash>' "
        "(/nix/store/<hash>-source), expected '<hash>', got '<hash>' at "
        "/nix/store/<hash>-source/flake.nix:3:1 from <host path> or https://example.org/a/b"
    ]
