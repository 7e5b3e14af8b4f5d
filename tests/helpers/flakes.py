"""A package set that is a flake, for tests and benchmarks: the demo set as the flake's
``legacyPackages``, and ``packages`` of its own, in a local git repository.

Pure evaluation reads no host path, so the flake takes the static busybox the demo set
bootstraps from through a locked, non-flake input: another git repository, which also holds
the ``/etc/services`` and ``/etc/protocols`` its ``iana-etc`` copies. It has no ``cacert``
(the demo set's reads a host file): images go without one.

Branches: ``master`` (HEAD) and ``second`` differ in the text ``greeting`` prints;
``unlocked`` has no flake.lock; ``hostile`` has ``pwn``, which reads the host's
/etc/hostname; ``incomplete`` declares an input its lock does not pin. Outside the
directories the registry allows (``eval_allow``): ``outside`` locks its busybox in another
repository, ``secret-lock`` locks a ``path:`` input to a secret file (with a wrong NAR hash,
which Nix would answer with the right one), ``secret-fetch`` calls ``builtins.fetchTree`` on it.
``rev-only`` locks its input by commit alone, without a NAR hash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, NIX_CONFIG, git

FLAKE = """{
  description = "demo-pkgs as a flake, for Nixery's tests";
  inputs.bb = { url = "@BB@"; flake = false; };
  outputs = { self, bb }:
    let
      system = "x86_64-linux";
      demo = import ./demo { inherit system; bootstrap = bb; };
      sh = "${demo.busybox}/bin/sh";
      # bin/NAME prints TEXT.
      script = name: text: derivation {
        inherit name system text;
        builder = sh;
        PATH = "${demo.busybox}/bin";
        args = [ "-c" ''
          mkdir -p $out/bin
          { echo "#!${sh}"; echo "echo \\"$text\\""; } > $out/bin/${name}
          chmod 0555 $out/bin/${name}
        '' ];
      };
    in {
      packages.${system} = {
        greeting = script "greeting" (builtins.readFile ./greeting.txt);
        @EXTRA@
      };
      legacyPackages.${system} = removeAttrs demo [ "cacert" ] // {
        iana-etc = derivation {
          name = "iana-etc-20230316";
          inherit system;
          builder = sh;
          PATH = "${demo.busybox}/bin";
          args = [ "-c" "mkdir -p $out/etc; cp ${bb}/etc/services ${bb}/etc/protocols $out/etc" ];
        };
        tools.shout = script "shout" "SHOUT";
      };
    };
}
"""
HOSTILE = 'pwn = script "pwn" (builtins.readFile /etc/hostname);'
WRONG_HASH = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
FETCH_SECRET = (
    'pwn = script "pwn" (builtins.readFile (builtins.fetchTree'
    f' {{ type = "path"; path = "@SECRET@"; narHash = "{WRONG_HASH}"; }}));'
)
GREETINGS = {"master": "hello from the main branch", "second": "hello from the second branch"}


@dataclass(frozen=True)
class FlakeRepo:
    path: Path
    url: str  # file://, as NIXERY_PKGS_REPO
    inputs: Path  # the busybox repository, the locked input
    commits: dict[str, str]  # branch -> commit
    secret: Path  # a file of the host's, outside what the registry allows


def eval_allow(repo: FlakeRepo) -> str:
    """NIXERY_EVAL_ALLOW for a registry serving the flake: its locked input's repository."""
    return f"{DEMO_EVAL_ALLOW}:{repo.inputs}"


def nix_env() -> dict[str, str]:
    return {**os.environ, "NIX_CONFIG": NIX_CONFIG}


def busybox_repo(dest: Path, nonce: str = "") -> Path:
    """A git repository holding the host's static busybox and its /etc files; with a
    ``nonce``, a file that makes its tree, and so its store path, new."""
    (dest / "etc").mkdir(parents=True)
    if nonce:
        (dest / "nonce").write_text(nonce)
    shutil.copy2(Path("/bin/busybox").resolve(), dest / "busybox")
    for name in ("services", "protocols"):
        shutil.copy(f"/etc/{name}", dest / "etc" / name)
    git(dest, "init", "-q", "-b", "master")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "busybox")
    return dest


def lock(repo: Path) -> None:
    """`nix flake lock`, flakes enabled for this call alone, as the registry does."""
    subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "flake", "lock", str(repo)],
        env=nix_env(), check=True, capture_output=True,
    )  # fmt: skip


def write_flake(repo: Path, inputs_url: str, greeting: str, extra: str = "") -> None:
    flake = FLAKE.replace("@BB@", inputs_url).replace("@EXTRA@", extra)
    (repo / "flake.nix").write_text(flake)
    (repo / "greeting.txt").write_text(greeting)


def flake_repo(dest: Path, nonce: str = "") -> FlakeRepo:
    """The flake repository and its input (with ``nonce``, a new one), under ``dest``."""
    inputs = busybox_repo(dest / "busybox", nonce)
    repo = dest / "flake"
    shutil.copytree(DEMO, repo / "demo")
    inputs_url = f"git+file://{inputs}"
    write_flake(repo, inputs_url, GREETINGS["master"])
    git(repo, "init", "-q", "-b", "master")
    git(repo, "add", "-A")
    lock(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the demo set as a flake")
    commits = {"master": git(repo, "rev-parse", "HEAD")}

    def branch(name: str, *change: str) -> None:
        git(repo, "checkout", "-q", "-b", name, "master")
        if change:
            git(repo, *change)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", name)
        commits[name] = git(repo, "rev-parse", "HEAD")

    write_flake(repo, inputs_url, GREETINGS["second"])
    branch("second")
    git(repo, "checkout", "-q", "master")
    branch("unlocked", "rm", "-q", "flake.lock")
    write_flake(repo, inputs_url, GREETINGS["master"], HOSTILE)
    branch("hostile")
    git(repo, "checkout", "-q", "master")
    more = f'inputs.more = {{ url = "{inputs_url}"; flake = false; }};\n  inputs.bb'
    (repo / "flake.nix").write_text((repo / "flake.nix").read_text().replace("inputs.bb", more))
    branch("incomplete")
    git(repo, "checkout", "-q", "master")
    elsewhere = busybox_repo(dest / "elsewhere", "elsewhere")
    write_flake(repo, f"git+file://{elsewhere}", GREETINGS["master"])
    lock(repo)
    branch("outside")
    git(repo, "checkout", "-q", "master")
    secret = dest / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text(f"secret {uuid.uuid4().hex}\n")
    fetch = FETCH_SECRET.replace("@SECRET@", str(secret))
    write_flake(repo, inputs_url, GREETINGS["master"], fetch)
    branch("secret-fetch")
    git(repo, "checkout", "-q", "master")
    write_flake(
        repo, inputs_url, GREETINGS["master"], 'pwn = script "pwn" (builtins.readFile secret);'
    )
    flake = (repo / "flake.nix").read_text()
    flake = flake.replace(
        "inputs.bb", f'inputs.secret = {{ url = "path:{secret}"; flake = false; }};\n  inputs.bb'
    )
    (repo / "flake.nix").write_text(flake.replace("{ self, bb }", "{ self, bb, secret }"))
    locked = json.loads((repo / "flake.lock").read_text())
    pinned = {"type": "path", "path": str(secret)}
    wrong = {**pinned, "narHash": WRONG_HASH, "lastModified": 1}
    locked["nodes"]["secret"] = {"flake": False, "original": pinned, "locked": wrong}
    locked["nodes"][locked["root"]]["inputs"]["secret"] = "secret"
    (repo / "flake.lock").write_text(json.dumps(locked, indent=2))
    branch("secret-lock")
    git(repo, "checkout", "-q", "master")
    locked = json.loads((repo / "flake.lock").read_text())
    del locked["nodes"]["bb"]["locked"]["narHash"]
    (repo / "flake.lock").write_text(json.dumps(locked, indent=2))
    branch("rev-only")
    git(repo, "checkout", "-q", "master")
    return FlakeRepo(repo, f"file://{repo}", inputs, commits, secret)
