"""Language environments on real images, in both modes: a name's packages of an interpreter's
set become one environment made by the set's own ``withPackages``, whose interpreter (the
demo set's stand-ins answer imports as the real ones do) sees them all, and no others."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from nixery.nix.runner import Nix
from tests.e2e.test_runtime_images import config_of
from tests.helpers.protocol import OCI
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, NIX_CONFIG, NIXERY, REPO

pytestmark = pytest.mark.e2e

# Main just before environments were merged (80e0482's first parent): images that hold no
# environment are built by it and by this checkout, and must come out byte for byte the same.
# A later change that moves every image's bytes on purpose moves this commit too. Not recorded
# digests: a demo image's digest moves with every edit of the demo set (its revision, a hash
# of its files, is in the image's annotations) and with the host's busybox.
BEFORE = "e6a5034"


@pytest.fixture(scope="module", params=["local", "gcp"])
def target(request, clients):
    reg = request.getfixturevalue({"local": "registry", "gcp": "gcp_registry"}[request.param])
    clients.trust(reg.host)
    return reg


def run(clients, image: str, *args: str) -> subprocess.CompletedProcess[str]:
    return clients.podman("run", "--rm", image, *args)


def test_python_environment_imports_the_names_packages_and_no_others(target, clients):
    for name in ("python3/python3packages.requests", "python3packages.requests"):
        image = f"{target.host}/{name}"
        assert config_of(target, name)["Entrypoint"] == ["/bin/python3"], name
        ok = run(clients, image, "-c", "import requests; import certifi, urllib3")
        assert ok.returncode == 0, ok.stderr
        missing = run(clients, image, "-c", "import numpy")
        assert missing.returncode == 1
        assert "ModuleNotFoundError: No module named 'numpy'" in missing.stderr
    both = f"{target.host}/python3packages.requests/python3packages.numpy"
    ok = run(clients, both, "-c", "import requests, numpy")
    assert ok.returncode == 0, ok.stderr


def test_perl_environment_loads_the_names_modules_and_no_others(target, clients):
    image = f"{target.host}/perlpackages.json"
    assert config_of(target, "perlpackages.json")["Entrypoint"] == ["/bin/perl"]
    ok = run(clients, image, "-MJSON", "-MURI", "-e", "1")  # URI: JSON's dependency
    assert ok.returncode == 0, ok.stderr
    missing = run(clients, image, "-MTry::Tiny", "-e", "1")
    assert missing.returncode == 2
    assert "Can't locate Try/Tiny.pm in @INC" in missing.stderr


def test_a_shell_beside_an_environment_runs_its_interpreter_from_path(target, clients):
    image = f"{target.host}/shell/python3/python3packages.numpy"
    ran = run(clients, image, "bash", "-c", "python3 -c 'import numpy' && readlink /bin/python3")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().endswith("-env/bin/python3")


def test_a_bare_interpreter_sees_no_set_packages(target, clients):
    ran = run(clients, f"{target.host}/python3", "-c", "import requests")
    assert ran.returncode == 1
    assert "No module named 'requests'" in ran.stderr


@pytest.mark.parametrize("other", ["python312packages.six", "python312"])
def test_two_interpreters_of_one_language_are_a_422_naming_both(target, other):
    name = f"{other}/python3packages.requests"
    response = target.get(f"/v2/{name}/manifests/latest")
    assert response.status_code == 422, response.text
    message = response.json()["errors"][0]["message"]
    for part in (other, "python3packages.requests", "python3-3.12.0", "python3-3.11.5"):
        assert part in message, message


def _built_digest(registry, tmp_path, name: str, code: list[str], env: dict[str, str]) -> str:
    out = tmp_path / f"{len(list(tmp_path.iterdir()))}.tar"
    env = {k: v for k, v in registry.env.items() if k not in ("STORAGE_PATH", "PORT")} | env
    built = subprocess.run([*code, "build", name, "-o", str(out)], env=env, capture_output=True,
                           text=True, timeout=600, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    match = re.search(r"manifest (sha256:[0-9a-f]{64})", built.stderr)
    assert match, built.stderr
    with tarfile.open(out):  # a readable archive
        pass
    return match.group(1)


def test_images_without_an_environment_keep_their_bytes(registry, tmp_path):
    """Built by the commit before environments and by this one, from the same package set:
    the same manifest digest, so the same config and layers."""
    has = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BEFORE}^{{commit}}"],
                         capture_output=True, check=False)  # fmt: skip
    if has.returncode != 0:
        pytest.skip(f"commit {BEFORE} (before environments) is not in this clone (shallow?)")
    old = tmp_path / "before"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE, "shared"],
                             capture_output=True, check=True)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    before = [os.fspath(NIXERY.parent / "python"), "-c",
              "import sys; from nixery.cli import main; sys.exit(main())"]  # fmt: skip
    builds = tmp_path / "builds"
    builds.mkdir()
    # Dotted names, so their keys moved (job.py), yet no environment: a set without
    # interpreter, and packages that are no interpreter's modules.
    dotted = ("nodepackages.prettier", "pkgsalt.hello", "nodejs.libv8", "python3packages.httpie")
    for name in ("hello", "jq", "python3", "shell/git", *dotted):
        was = _built_digest(registry, builds, name, before, {"PYTHONPATH": str(old / "shared")})
        now = _built_digest(registry, builds, name, [str(NIXERY)], {})
        assert now == was, name


def build_of(target, name: str) -> dict:
    """The build's JSON, once the front page's list (cached for seconds) names it."""
    for _ in range(30):
        builds = target.get("/api/v1/registry").json()["builds"]
        urls = [b["url"] for b in builds if set(b["name"].split("/")) == set(name.split("/"))]
        if urls:
            return target.get("/api/v1/builds/" + urls[0].rsplit("/", 1)[1]).json()
        time.sleep(0.5)
    raise AssertionError(f"{name} is not among the latest builds")


def sbom_of(target, name: str) -> dict:
    response = target.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})
    digest = response.headers["Docker-Content-Digest"]
    (artifact,) = target.get(f"/v2/{name}/referrers/{digest}").json()["manifests"]
    manifest = target.get(f"/v2/{name}/manifests/{artifact['digest']}",
                          headers={"Accept": OCI}).json()  # fmt: skip
    blob = target.get(f"/v2/{name}/blobs/{manifest['layers'][0]['digest']}",
                      allow_redirects=True)  # fmt: skip
    return json.loads(blob.content)


def test_the_build_page_and_the_sbom_show_the_environment_and_its_members(target):
    name = "python3packages.requests/python3packages.numpy"
    config_of(target, name)  # built
    build = build_of(target, name)
    (env,) = build["environments"]
    assert env["language"] == "python" and env["interpreter"] == "python3-3.11.5"
    assert env["members"] == ["python3packages.numpy", "python3packages.requests"]
    assert env["store_path"].endswith("-python3-3.11.5-env")
    assert {p["store_path"] for p in build["packages"] if "." in p["attribute"]} == {
        env["store_path"]
    }
    page = target.get(urlsplit(build["url"]).path).text
    assert "Environments" in page and "python3-3.11.5" in page
    # The names in one cell, their store paths in the next.
    cells = r'<li>python3packages\.requests</li></ul></td><td><ul class="mono"><li>/nix/store/'
    assert re.search(cells, page)

    bom = sbom_of(target, name)
    components = {c["name"]: c for c in bom["components"]}
    for member in ("requests", "numpy", "certifi", "idna", "urllib3", "charset-normalizer"):
        assert member in components, member
    assert components["requests"]["type"] == components["numpy"]["type"] == "application"
    environment = next(c for c in bom["components"] if c["bom-ref"] == env["store_path"])
    properties = {(p["name"], p["value"]) for p in environment["properties"]}
    assert ("nixery:environment:interpreter", "python3-3.11.5") in properties
    assert ("nixery:environment:package", "python3packages.requests") in properties
    depends = next(d for d in bom["dependencies"] if d["ref"] == env["store_path"])
    assert components["requests"]["bom-ref"] in depends["dependsOn"]


def test_a_set_without_with_packages_stays_plain_and_its_page_says_so(target, clients):
    name = "nodepackages.prettier"
    config = config_of(target, name)
    assert "Entrypoint" not in config
    build = build_of(target, name)
    assert build["plain"] == [name] and build["environments"] == []
    page = target.get(urlsplit(build["url"]).path).text
    assert 'id="plain"' in page
    ran = run(clients, f"{target.host}/{name}", "prettier")
    assert ran.returncode == 0 and ran.stdout.strip() == "prettier 3.0.3", ran.stderr


@pytest.mark.parametrize(
    ("name", "path", "noted"),
    [
        # A whole package set holding interpreters (nixpkgs' pkgsStatic): hello is no module.
        ("pkgsalt.hello", "-hello-2.12.1", True),
        # A derivation's passthru beside its `python` (nixpkgs' nodejs): no package set at all.
        ("nodejs.libv8", "-libv8-11.3", False),
        # An application of a python set (nixpkgs' toPythonApplication: pythonModule false).
        ("python3packages.httpie", "-httpie-3.2.2", True),
    ],
)
def test_a_package_without_its_interpreters_marker_stays_plain(target, clients, name, path, noted):
    """Only a package that says it is an interpreter's module (nixpkgs' pythonModule,
    perlModule...) joins an environment: where it sits proves nothing."""
    config_of(target, name)  # built
    build = build_of(target, name)
    assert build["environments"] == [], build["environments"]
    (package,) = (p for p in build["packages"] if p["attribute"] == name)
    assert package["store_path"].endswith(path)
    assert build["plain"] == ([name] if noted else []), "the note is for package sets only"
    program = path.split("-")[1]
    ran = run(clients, f"{target.host}/{name}", program, "--version")
    assert ran.returncode == 0 and ran.stdout.startswith(program), ran.stderr


def test_one_module_with_a_program_of_its_own_runs_it(target, clients):
    """python3packages.black is a module (in its environment) and a tool, which it runs."""
    assert config_of(target, "python3packages.black")["Entrypoint"] == ["/bin/black"]
    ran = run(clients, f"{target.host}/python3packages.black")
    assert ran.returncode == 0 and ran.stdout.strip() == "black 23.9.1", ran.stderr


def test_a_package_its_environment_leaves_out_is_kept_plain(monkeypatch, tmp_path):
    """A set whose withPackages leaves out a package the name asks for (nixpkgs' keep only
    what they know as modules): the image holds it as a plain package rather than lose it."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / "default.nix").write_text(
        f"args: let pkgs = import {DEMO} args;\n"
        "  python = pkgs.python3 // { withPackages = f: pkgs.python3.withPackages\n"
        '    (ps: builtins.filter (p: p.pname != "numpy") (f ps)); };\n'
        "  mark = p: p // { pythonModule = python; };\n"
        "  set = pkgs.python3Packages;\n"
        "in pkgs // { python3Packages = set // {\n"
        "  inherit python; numpy = mark set.numpy; requests = mark set.requests; }; }\n"
    )
    nix = Nix(REPO / "prepare-image", eval_allow=[Path(p) for p in DEMO_EVAL_ALLOW.split(":")],
              timeout=60)  # fmt: skip
    numpy, requests = "python3packages.numpy", "python3packages.requests"
    with nix.build(pkgs, [requests, numpy], "x86_64-linux") as result:
        assert result.outputs[numpy].endswith("-numpy-1.25.2")
        assert result.outputs[numpy] in result.closure
        assert result.outputs[requests].endswith("-python3-3.11.5-env")
        (env,) = result.environments
        assert env.members == (requests,) and not env.contents[0].endswith("-numpy-1.25.2")
        assert result.plain == (numpy,)
    with nix.build(pkgs, [numpy], "x86_64-linux") as result:
        assert result.outputs[numpy] in result.closure
        assert result.environments == () and result.plain == (numpy,)
