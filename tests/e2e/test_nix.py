"""Nix: both JSON shapes of `nix path-info`, its error messages, and real builds."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nixery.errors import BuildFailed, BuildInterrupted, BuildTimedOut, Transient, UnknownPackages
from nixery.nix.path_info import PackageMeta, parse_path_info
from nixery.nix.runner import (
    AUTO_ROOTS,
    ROOTS,
    Nix,
    _classify,
    _error_message,
    check_nix_version,
    remove_stale_roots,
)
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, NIX_CONFIG, REPO

DEMO_PATHS = [Path(p) for p in DEMO_EVAL_ALLOW.split(":")]

A = "/nix/store/" + "a" * 32 + "-a-1.0"
B = "/nix/store/" + "b" * 32 + "-b-1.0"


def test_path_info_list_shape_of_nix_2_8():
    text = json.dumps(
        [
            {"path": A, "narHash": "sha256:x", "narSize": 10, "references": [A, B]},
            {"path": B, "narHash": "sha256:y", "narSize": 20, "references": []},
        ]
    )
    closure = parse_path_info(text)
    assert closure[A].references == (B,), "self-references are dropped"
    assert closure[B].nar_size == 20


def test_path_info_object_shape_of_nix_2_19():
    text = json.dumps(
        {
            A: {"narHash": "sha256-x", "narSize": 10, "references": [B]},
            B: {"narHash": "sha256-y", "narSize": 20, "references": []},
        }
    )
    closure = parse_path_info(text)
    assert set(closure) == {A, B}
    assert closure[A].references == (B,)


def test_error_message_takes_the_error_line():
    lines = [
        "building '/nix/store/x-broken-1.0.drv'...",
        "error: broken is broken on purpose",
        "\x1b[31;1merror:\x1b[0m builder for '/nix/store/x-broken-1.0.drv' failed with exit code 1",
    ]
    assert _error_message(lines).startswith("broken is broken on purpose")


def test_error_message_of_nix_2_20_and_later_is_the_last_error_line_after_the_trace():
    """As Nix 2.26 prints an evaluation error: a bare `error:`, the trace, then the error."""
    lines = [
        "error:",
        "       … while evaluating attribute 'drvPath'",
        "         at /nix/store/x-source/default.nix:4:3:",
        "       error: access to absolute path '/etc' is forbidden in pure evaluation mode",
    ]
    assert _error_message(lines).startswith("access to absolute path '/etc' is forbidden")


def test_outputs_are_gc_roots_while_the_image_is_made(monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=60)

    def roots(path: str) -> str:
        return subprocess.run(
            ["nix-store", "--query", "--roots", path], capture_output=True, text=True, check=True
        ).stdout

    with nix.build(DEMO, ["hello"], "x86_64-linux") as result:
        hello = result.outputs["hello"]
        assert f"{ROOTS}/{os.getpid()}/" in roots(hello)
        assert any(p.endswith("-glibc-2.37-8") for p in result.closure)
    assert str(ROOTS) not in roots(hello)
    # Only removed ones: a flake's copy in the store stays rooted while its process lives.
    dangling = [link for link in AUTO_ROOTS.iterdir()
                if os.readlink(link).startswith(f"{ROOTS}/")
                and not os.path.lexists(os.readlink(link))]  # fmt: skip
    assert dangling == [], "no auto root is left pointing at a removed directory"


def test_roots_a_dead_process_left_are_removed(tmp_path):
    """A server killed mid-build leaves its roots directory, and Nix's auto root pointing into
    it; the next process removes both, and leaves a live process's alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = ROOTS / str(dead.pid) / "tmpbuild"
    left.mkdir(parents=True)
    (left / "out").symlink_to(tmp_path)
    link = AUTO_ROOTS / f"nixery-test-{dead.pid}"
    link.symlink_to(left / "out")
    alive = ROOTS / str(os.getpid())
    alive.mkdir(parents=True, exist_ok=True)
    remove_stale_roots()
    assert not (ROOTS / str(dead.pid)).exists() and not os.path.lexists(link)
    assert alive.is_dir()


def test_unknown_packages_are_reported_together(monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=60)
    with (
        pytest.raises(UnknownPackages) as raised,
        nix.build(DEMO, ["hello", "nope-a", "nope-b"], "x86_64-linux"),
    ):
        pass
    assert raised.value.names == ["nope-a", "nope-b"]


# Lines as Nix 2.8 and 2.26 print them; the first two cannot be produced offline here (no
# substituter, no full disk), the others are also produced for real below and in e2e tests.
TRANSIENT_LOGS = [
    "error: unable to download 'https://cache.nixos.org/nar/x.nar.xz': HTTP error 503",
    "error: writing to file: No space left on device",
    "error: builder for '/nix/store/x-big.drv' failed due to signal 9 (Killed)",
    "\x1b[31;1merror:\x1b[0m std::bad_alloc",
    # A flake's git+https input, the network down (Nix 2.8 runs git).
    "fatal: unable to access 'https://example.org/r.git/': Could not resolve host: example.org"
    "\nerror: program 'git' failed with exit code 128",
    "error: Failed to connect to example.org port 443 after 3 ms: Couldn't connect to server",
]
PERMANENT_LOGS = [
    "error: builder for '/nix/store/x-broken-1.0.drv' failed with exit code 1",
    "error: attribute 'nope' missing",
    # A package's own output is not Nix's verdict: only error lines are read.
    "checking for out of memory handling... yes\nerror: builder for 'x' failed with exit code 2",
]


@pytest.mark.parametrize("line", TRANSIENT_LOGS)
def test_trouble_outside_the_package_set_is_transient(line):
    error = _classify("building", 1, False, 60, line.split("\n"))
    assert isinstance(error, BuildInterrupted) and isinstance(error, Transient)


@pytest.mark.parametrize("line", PERMANENT_LOGS)
def test_failed_derivations_and_evaluation_errors_are_permanent(line):
    assert type(_classify("building", 1, False, 60, line.split("\n"))) is BuildFailed


def test_timeouts_are_permanent_and_a_killed_nix_is_not():
    timed_out = ["error: builder for '/nix/store/x-slow-1.0.drv' timed out after 3 seconds"]
    assert isinstance(_classify("building", 1, False, 60, timed_out), BuildTimedOut)
    assert isinstance(_classify("building", -9, True, 60, []), BuildTimedOut), "our deadline"
    assert isinstance(_classify("building", -9, False, 60, []), BuildInterrupted), "OOM killer"


def test_a_nix_killed_from_outside_is_transient(monkeypatch):
    """As the OOM killer would: SIGKILL to the running nix-store, not by our deadline."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=600)
    raised: list[BaseException] = []

    def build() -> None:
        try:
            with nix.build(DEMO, ["slow"], "x86_64-linux"):
                pass
        except BaseException as e:
            raised.append(e)

    builder = threading.Thread(target=build)
    builder.start()
    deadline = time.monotonic() + 60
    while subprocess.run(["pkill", "-KILL", "-f", "nix-store --realise"]).returncode != 0:
        assert time.monotonic() < deadline, "nix-store never started"
        time.sleep(0.2)
    builder.join(60)
    # The builder outlives a killed nix-store (as it would in production); end its session.
    leaders = subprocess.run(["pgrep", "-f", "slow: sleeping"], capture_output=True, text=True)
    for leader in leaders.stdout.split():
        subprocess.run(["pkill", "-KILL", "-s", leader], check=False)
    assert len(raised) == 1 and isinstance(raised[0], BuildInterrupted), raised
    assert "signal 9" in raised[0].message


def test_the_running_nix_is_recent_enough():
    assert check_nix_version().split(".")[:2] >= ["2", "8"]


def test_a_set_that_needs_a_newer_nix_fails_naming_both_versions(monkeypatch, tmp_path):
    """nixpkgs declares its minimum in lib/minver.nix; it is checked before the set is read."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    pkgs = tmp_path / "pkgs"
    (pkgs / "lib").mkdir(parents=True)
    (pkgs / "default.nix").write_text(f"import {DEMO}\n")
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=60)
    (pkgs / "lib" / "minver.nix").write_text('"99.1"\n')
    with pytest.raises(BuildFailed) as raised, nix.build(pkgs, ["hello"], "x86_64-linux"):
        pass
    running = check_nix_version()
    assert "99.1" in raised.value.message and running in raised.value.message
    (pkgs / "lib" / "minver.nix").write_text('"2.0"\n')
    with nix.build(pkgs, ["hello"], "x86_64-linux") as result:
        assert "hello" in result.outputs


def test_a_build_past_its_deadline_times_out_and_leaves_no_builder(monkeypatch):
    """The build's deadline (NIXERY_BUILD_DEADLINE) cuts Nix off even while NIX_TIMEOUT would
    still let the builder run; Nix is stopped so that it stops its builder too."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=600)
    with (
        pytest.raises(BuildTimedOut, match="NIXERY_BUILD_DEADLINE") as raised,
        nix.build(DEMO, ["slow"], "x86_64-linux", time.monotonic() + 5),
    ):
        pass
    assert "slow: sleeping" in raised.value.log_tail
    left = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True)
    assert left.stdout == "", "the builder outlived Nix"


def test_a_build_out_of_time_does_not_start_nix(monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=60)
    with (
        pytest.raises(BuildTimedOut, match="ran out of time"),
        nix.build(DEMO, ["hello"], "x86_64-linux", time.monotonic() - 1),
    ):
        pass


def hostile_set(tmp_path: Path, body: str) -> Path:
    """A package set whose ``pwn`` package does what ``body`` says, beside the demo set's."""
    pkgs = tmp_path / "hostile"
    pkgs.mkdir()
    (pkgs / "default.nix").write_text(
        f'args: import {DEMO} args // {{\n  pwn = derivation {{ name = "pwn";'
        f' system = "x86_64-linux"; builder = "/bin/sh"; got = {body}; }};\n}}\n'
    )
    return pkgs


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        ('builtins.readFile "/etc/hostname"', "forbidden in restricted mode"),
        ("builtins.readDir /root", "forbidden in restricted mode"),
        ('builtins.fetchurl "http://127.0.0.1:9/x"', "forbidden in restricted mode"),
        ('builtins.readFile "${<nixpkgs>}/x"', "not found in the Nix search path"),
        ('builtins.getEnv "HOME"', None),  # reads as "" in restricted mode
    ],
)
def test_evaluation_reads_only_the_set_and_fetches_nothing(monkeypatch, tmp_path, body, refused):
    """Even a trusted set, should it turn hostile, cannot read the server's files, fetch
    URLs or find paths through NIX_PATH while it is evaluated."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    monkeypatch.setenv("NIX_PATH", "nixpkgs=/etc")
    monkeypatch.setenv("HOME", "/root")
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=60)
    pkgs = hostile_set(tmp_path, body)
    if refused is None:
        plan = nix._plan(pkgs, ["pwn"], "x86_64-linux", time.monotonic() + 60)
        drv = subprocess.run(
            ["nix", "--extra-experimental-features", "nix-command", "show-derivation",
             plan["packages"][0]["drvPath"]], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert '"got": ""' in drv
        return
    with pytest.raises(BuildFailed, match=refused), nix.build(pkgs, ["pwn"], "x86_64-linux"):
        pass


# Nix syntax, path tricks and control characters as package names: they reach Nix only as
# JSON data, so each is a name that does not exist, never code.
HOSTILE_NAMES = [
    '${builtins.readFile "/etc/passwd"}',
    '"; builtins.abort "pwned',
    'hello" + builtins.readFile "/etc/passwd" + "',
    "hello.${builtins.currentTime}",
    "(import /etc/passwd)",
    "../../etc/passwd",
    "/etc/passwd",
    "<nixpkgs>",
    "hello\nabort",
    "__functor",
    "x.y.z.w.v.u.t.s.r.q.p",
    "let a = 1; in a",
    "builtins",
]


def test_hostile_package_names_are_unknown_packages(monkeypatch):
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=60)
    with pytest.raises(UnknownPackages) as raised, nix.build(DEMO, HOSTILE_NAMES, "x86_64-linux"):
        pass
    assert raised.value.names == HOSTILE_NAMES


def test_meta_of_the_packages_and_their_inputs_reaches_python(monkeypatch, tmp_path):
    """The SBOM's data, as the package set's meta spells it: licenses as attribute sets (an
    SPDX id, or a short name) or strings, homepages as strings or lists; a meta that throws
    leaves its package undescribed rather than failing the build."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / "default.nix").write_text(
        f"args: let pkgs = import {DEMO} args; in pkgs // {{\n"
        "  htop = pkgs.htop // { meta = {\n"
        '    description = "process viewer"; homepage = [ "https://htop.dev" "https://x" ];\n'
        '    license = [ { spdxId = "GPL-2.0-only"; } { shortName = "free"; } "custom" ]; }; };\n'
        '  hello = pkgs.hello // { meta = throw "no meta here"; };\n'
        "}\n"
    )
    nix = Nix(REPO / "prepare-image", eval_allow=DEMO_PATHS, timeout=60)
    with nix.build(pkgs, ["hello", "htop"], "x86_64-linux") as result:
        htop, hello = result.outputs["htop"], result.outputs["hello"]
        assert result.meta[htop] == PackageMeta(
            "htop", "3.2.2", "process viewer", "https://htop.dev",
            (("id", "GPL-2.0-only"), ("name", "free"), ("name", "custom")),
        )  # fmt: skip
        assert hello in result.closure and hello not in result.meta
        # htop's inputs (the demo set's deps) are described too.
        ncurses = next(p for p in result.closure if p.endswith("-ncurses-6.4"))
        assert result.meta[ncurses].pname == "ncurses"
        assert result.meta[ncurses].description == "demo stand-in for ncurses"
