import os

from nixery.pipeline.image_root import image_root


def package(root, name, files):
    out = root / name
    for rel, content in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(content)
    return str(out)


def test_merged_symlink_tree(tmp_path):
    a = package(
        tmp_path, "a", {"bin/env": "", "bin/tool": "", "share/doc/a": "", "nix-support/x": ""}
    )
    b = package(tmp_path, "b", {"bin/tool": "", "bin/other": "", "etc/passwd": "evil"})
    entries = {e.path: e for e in image_root([a, b])}
    assert entries["bin"].kind == "dir"
    assert entries["bin/tool"].target == os.path.join(a, "bin/tool"), "the first package wins"
    assert entries["bin/other"].target == os.path.join(b, "bin/other")
    assert entries["share/doc/a"].kind == "symlink"
    assert "nix-support" not in entries
    assert entries["usr/bin/env"].target == os.path.join(a, "bin/env")
    assert entries["etc/passwd"].kind == "file" and b"root:x:0:0" in entries["etc/passwd"].data
    assert b"nobody" in entries["etc/passwd"].data and b"root" in entries["etc/group"].data
    assert entries["tmp"].mode == 0o1777
    assert len(entries) == len(image_root([a, b])), "no path twice"


def test_no_env_no_usr_bin_env(tmp_path):
    a = package(tmp_path, "a", {"bin/hello": ""})
    assert "usr/bin/env" not in {e.path for e in image_root([a])}


def test_nonroot_adds_a_locked_user_with_its_own_home(tmp_path):
    a = package(tmp_path, "a", {"bin/hello": ""})
    assert "etc/shadow" not in {e.path for e in image_root([a])}, "root images are as before"
    entries = {e.path: e for e in image_root([a], nonroot=True)}
    assert b"nixery:x:1000:1000:" in entries["etc/passwd"].data
    assert b"root:x:0:0" in entries["etc/passwd"].data
    assert b"nixery:x:1000:\n" in entries["etc/group"].data
    shadow = entries["etc/shadow"].data.decode().splitlines()
    assert {line.split(":")[0] for line in shadow} == {"root", "nobody", "nixery"}
    assert all(line.split(":")[1] == "!" for line in shadow), "every account locked"
    home = entries["home/nixery"]
    assert (home.kind, home.owner, home.mode) == ("dir", 1000, 0o755)
    assert entries["tmp"].mode == 0o1777
