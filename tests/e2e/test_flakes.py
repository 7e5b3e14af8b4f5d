"""A flake as the package source, end to end: a local git repository (``helpers.flakes``)
whose flake takes its busybox from a locked, non-flake input, served by a real registry and
pulled and run by skopeo and podman; its branches as tags; the lock as the only source of
inputs; pure evaluation; and everything the image carries about where it comes from."""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixery.errors import BuildFailed, BuildInterrupted
from nixery.job import image_key
from nixery.nix.runner import Nix
from nixery.records import Revision
from nixery.request import UID, parse_name
from nixery.service.catalog import FRONT_TTL
from nixery.sources.path import PathSource
from tests.helpers.emulators import ContainerBuilderRegistry
from tests.helpers.flakes import GREETINGS, WRONG_HASH, FlakeRepo, eval_allow, flake_repo, lock
from tests.helpers.registries import DEMO, NIX_CONFIG, NIXERY, OCI, REPO, Registry, git

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def flake(tmp_path_factory: pytest.TempPathFactory) -> FlakeRepo:
    return flake_repo(tmp_path_factory.mktemp("flake"))


@pytest.fixture(scope="module")
def flake_registry(
    flake: FlakeRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    storage = tmp_path_factory.mktemp("flake-registry") / "storage"
    allow = eval_allow(flake)
    reg = Registry(storage, NIXERY_PKGS_REPO=flake.url, NIX_TIMEOUT="30", NIXERY_EVAL_ALLOW=allow)
    reg.start()
    yield reg
    reg.stop()


def manifest(registry: Registry, name: str, tag: str = "latest"):
    return registry.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI})


def report_of(registry: Registry, name: str, revision: Revision) -> dict:
    """The build page's JSON of the image built from ``revision``."""
    key = image_key(parse_name(name), revision)
    return registry.get(f"/api/v1/builds/{key}").json()


def master(flake: FlakeRepo) -> Revision:
    return Revision(f"git:{flake.url}", flake.commits["master"])


def error_of(response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["errors"][0]["message"]


def test_images_from_packages_and_nested_legacy_packages_pull_and_run(
    flake_registry, clients, tmp_path
):
    host = flake_registry.host
    copied = clients.copy(host, "greeting", tmp_path / "greeting")
    assert copied.returncode == 0, copied.stderr + flake_registry.log()
    ran = clients.podman("run", "--rm", f"{host}/greeting", "greeting")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == GREETINGS["master"]
    ran = clients.podman("run", "--rm", f"{host}/tools.shout", "shout")
    assert (ran.returncode, ran.stdout.strip()) == (0, "SHOUT"), ran.stderr
    # The demo set as legacyPackages: the usual names, nested sets and the shell.
    ran = clients.podman("run", "--rm", f"{host}/shell/python3packages.requests", "bash", "-c",
                         "requests")  # fmt: skip
    assert ran.returncode == 0, ran.stderr + flake_registry.log()
    assert ran.stdout.split("\n")[0] == "requests 2.31.0"


def test_a_flakes_interpreter_sets_give_language_environments(flake_registry, flake, clients):
    """The flake's legacyPackages carry the demo set's python3 with withPackages: its
    packages become one environment, as from a default.nix, and its interpreter sees them."""
    host = flake_registry.host
    clients.trust(host)
    image = f"{host}/python3packages.requests"  # its entrypoint: the environment's python3
    ran = clients.podman("run", "--rm", image, "-c", "import requests")
    assert ran.returncode == 0, ran.stderr + flake_registry.log()
    ran = clients.podman("run", "--rm", image, "-c", "import numpy")
    assert ran.returncode == 1 and "No module named 'numpy'" in ran.stderr
    page = report_of(flake_registry, "python3packages.requests", master(flake))
    (env,) = page["environments"]
    assert env["members"] == ["python3packages.requests"] and page["flake"] is not None


def test_the_same_derivations_as_the_set_served_by_its_default_nix(flake_registry, flake, registry):
    """The flake's legacyPackages are the demo set, its busybox a locked input: the same
    store paths as the demo set read from the host."""
    assert manifest(flake_registry, "hello").status_code == 200
    assert manifest(registry, "hello").status_code == 200
    flaky = report_of(flake_registry, "hello", master(flake))
    plain = report_of(registry, "hello", PathSource(DEMO).resolve("latest"))
    hello = {p["attribute"]: p["store_path"] for p in plain["packages"]}["hello"]
    assert {p["attribute"]: p["store_path"] for p in flaky["packages"]}["hello"] == hello


def test_a_second_branch_gives_another_image(flake_registry, clients):
    host = flake_registry.host
    ran = clients.podman("run", "--rm", f"{host}/greeting:second", "greeting")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == GREETINGS["second"]
    first, second = (
        manifest(flake_registry, "greeting"),
        manifest(flake_registry, "greeting", "second"),
    )
    assert first.headers["Docker-Content-Digest"] != second.headers["Docker-Content-Digest"]


@pytest.mark.parametrize(
    ("branch", "said"),
    [
        ("unlocked", "the flake has no flake.lock to pin its inputs (bb)"),
        ("incomplete", "flake.lock does not pin the flake's inputs more"),
    ],
)
def test_a_flake_whose_lock_does_not_pin_its_inputs_is_refused_naming_it(
    flake_registry, branch, said
):
    assert said in error_of(manifest(flake_registry, "greeting", branch))


def test_a_flake_that_reads_a_host_file_fails_and_leaks_nothing(flake_registry):
    hostname = Path("/etc/hostname").read_text().strip()
    response = manifest(flake_registry, "pwn", "hostile")
    message = error_of(response)
    assert "access to absolute path '<host path>' is forbidden in pure eval mode" in message
    assert hostname not in response.text
    url = response.json()["errors"][0]["detail"]["url"]
    page = flake_registry.get(f"/api/v1/builds/{url.rsplit('/', 1)[1]}")
    assert page.json()["status"] == "failed" and hostname not in page.text


def nar_hashes(path: Path) -> tuple[str, str]:
    """The NAR hash of a file, as the flake.lock and Nix's messages spell it, and as base32."""
    hashed = [["nix-hash", "--type", "sha256", *how, str(path)] for how in ([], ["--base32"])]
    base16, base32 = (subprocess.run(c, capture_output=True, text=True, check=True).stdout
                      for c in hashed)  # fmt: skip
    return "sha256-" + base64.b64encode(bytes.fromhex(base16.strip())).decode(), base32.strip()


def secret_store_path(secret: Path) -> str:
    """Where Nix copies a file as a flake input (``source``), without copying it."""
    return subprocess.run(
        ["nix-store", "--print-fixed-path", "--recursive", "sha256",
         nar_hashes(secret)[1], "source"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def leaks(flake: FlakeRepo, *texts: str) -> list[str]:
    """What of the secret file the texts hold: its content, its hash or its store path's."""
    secret = (flake.secret.read_text().strip(), *nar_hashes(flake.secret))
    store_hash = secret_store_path(flake.secret).split("/")[3].split("-")[0]
    return [s for s in (*secret, store_hash) if any(s in text for text in texts)]


def test_a_lock_pinning_a_host_file_is_refused_before_nix_reads_it(flake_registry, flake):
    """A ``path:`` input with a wrong hash: Nix would copy the file into the store and name
    its hash in the error; with the right one, the flake would evaluate to its content."""
    response = manifest(flake_registry, "pwn", "secret-lock")
    message = error_of(response)
    assert "flake.lock pins the input secret to a path on the registry's machine" in message
    assert "NIXERY_EVAL_ALLOW" in message and not leaks(flake, response.text)
    assert not Path(secret_store_path(flake.secret)).exists(), (
        "the secret was copied into the store"
    )


def test_a_git_input_outside_the_allowed_directories_is_refused(flake_registry):
    message = error_of(manifest(flake_registry, "greeting", "outside"))
    assert "flake.lock pins the input bb to a path on the registry's machine" in message


def test_flake_code_fetching_a_host_file_fails_without_leaking_it(flake_registry, flake):
    """builtins.fetchTree on a host path, a wrong hash: Nix names the right one, the client
    does not see it (docs/security.md says what Nix 2.8 still lets such code read)."""
    response = manifest(flake_registry, "pwn", "secret-fetch")
    message = error_of(response)
    assert "<hash>" in message and WRONG_HASH not in message, message
    url = response.json()["errors"][0]["detail"]["url"]
    page = flake_registry.get(f"/api/v1/builds/{url.rsplit('/', 1)[1]}")
    assert page.json()["status"] == "failed"
    assert not leaks(flake, response.text, page.text)
    assert str(flake.secret) not in response.text + page.text


def test_unknown_attributes_are_refused_with_suggestions_from_the_flake(flake_registry):
    response = manifest(flake_registry, "greetin/requests")
    message = error_of(response)
    assert "greetin (did you mean greeting?)" in message
    assert "requests (did you mean python3Packages.requests?)" in message


def test_the_build_page_shows_the_flake_and_what_the_image_goes_without(flake_registry, flake):
    """The flake has iana-etc and the shell's packages but no cacert: the image goes without,
    and says so; asked for by name, cacert is an unknown package."""
    assert manifest(flake_registry, "shell/hello").status_code == 200
    page = report_of(flake_registry, "shell/hello", master(flake))
    assert page["left_out"] == ["cacert"]
    assert page["flake"]["inputs"][0]["name"] == "bb"
    html = flake_registry.get(page["url"].removeprefix(flake_registry.url)).text
    assert 'id="left-out"' in html and "<code>cacert</code>" in html and 'id="inputs"' in html
    assert "unknown packages: cacert" in error_of(manifest(flake_registry, "cacert/hello"))
    front = flake_registry.get("/api/v1/registry").json()
    for _ in range(int(FRONT_TTL * 4)):  # the front page's latest builds, kept for seconds
        if front["flake"] is not None:
            break
        time.sleep(0.5)
        front = flake_registry.get("/api/v1/registry").json()
    assert front["flake"] is True
    assert front["source"] == f"git:{flake.url}"


def sbom_properties(registry: Registry, response) -> dict[str, str]:
    """The properties of the SBOM's subject, for the image ``response`` is the manifest of."""
    digest = response.headers["Docker-Content-Digest"]
    (sbom,) = registry.get(f"/v2/greeting/referrers/{digest}").json()["manifests"]
    artifact = registry.get(f"/v2/greeting/manifests/{sbom['digest']}",
                            headers={"Accept": OCI}).json()  # fmt: skip
    blob = registry.get(f"/v2/greeting/blobs/{artifact['layers'][0]['digest']}",
                        allow_redirects=True).json()  # fmt: skip
    return {p["name"]: p["value"] for p in blob["metadata"]["component"]["properties"]}


def test_an_input_locked_by_its_commit_alone_has_no_nar_hash_in_the_sbom(flake_registry):
    response = manifest(flake_registry, "greeting", "rev-only")
    assert response.status_code == 200, response.text
    properties = sbom_properties(flake_registry, response)
    assert "rev=" in properties["nixery:flake:input:bb:url"]
    assert "nixery:flake:input:bb:nar-hash" not in properties


def test_the_sbom_and_annotations_name_the_flake_its_commit_and_locked_inputs(
    flake_registry, flake
):
    response = manifest(flake_registry, "greeting")
    assert response.status_code == 200
    annotations = response.json()["annotations"]
    assert annotations["org.opencontainers.image.source"] == flake.url
    assert annotations["org.opencontainers.image.revision"] == flake.commits["master"]
    properties = sbom_properties(flake_registry, response)
    lock = json.loads((flake.path / "flake.lock").read_text())["nodes"]["bb"]["locked"]
    assert properties["nixery:flake:input:bb:nar-hash"] == lock["narHash"]
    assert properties["nixery:flake:input:bb:url"] == (
        f"git+file://{flake.inputs}?ref=master&rev={lock['rev']}"
    )
    assert properties["nixery:flake:nar-hash"].startswith("sha256-")
    assert properties["nixery:package-set:revision"] == flake.commits["master"]


def test_search_lists_the_flakes_attributes(flake_registry):
    assert manifest(flake_registry, "greeting").status_code == 200
    found = flake_registry.get("/api/v1/packages", params={"q": "greet"}).json()
    assert [r["attribute"] for r in found["results"]] == ["greeting"]
    nested = flake_registry.get("/api/v1/packages", params={"q": "requests"}).json()
    assert "python3Packages.requests" in [r["attribute"] for r in nested["results"]]


def test_nixery_build_writes_an_image_from_a_flake(flake_registry, tmp_path):
    """Without a server, the same image the registry serves."""
    env = {k: v for k, v in flake_registry.env.items() if k not in ("STORAGE_PATH", "PORT")}
    out = tmp_path / "greeting.tar"
    built = subprocess.run([str(NIXERY), "build", "greeting:second", "-o", str(out)], env=env,
                           capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    served = manifest(flake_registry, "greeting", "second").headers["Docker-Content-Digest"]
    assert f"manifest {served}" in built.stderr


# Google Cloud mode, the builder run as its image: Nix 2.26 gives the images Nix 2.8 gives.


@pytest.fixture(scope="module")
def container_flake_registry(flake, emulators, builder_image, tmp_path_factory):
    """The same repositories, copied and owned by the image's user (git and Nix 2.26's
    libgit2 refuse another user's repository), mounted at the paths the lock names."""
    copy = tmp_path_factory.mktemp("flake-copy")
    mounts = {}
    for repo in (flake.path, flake.inputs):
        shutil.copytree(repo, copy / repo.name, symlinks=True)
        mounts[str(copy / repo.name)] = str(repo)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(copy)], check=True)
    reg = ContainerBuilderRegistry(
        tmp_path_factory.mktemp("gcp-flake"), emulators, builder_image, mounts,
        NIXERY_PKGS_PATH="", NIXERY_PKGS_REPO=flake.url, NIX_TIMEOUT="30",
        NIXERY_EVAL_ALLOW=eval_allow(flake),
    )  # fmt: skip
    reg.start()
    yield reg
    reg.stop()


@pytest.mark.parametrize(("name", "tag"), [("greeting", "latest"), ("greeting", "second"),
                                           ("shell/tools.shout", "latest"),
                                           ("python3packages.requests", "latest")])  # fmt: skip
def test_google_cloud_mode_with_nix_2_26_gives_the_same_images(
    container_flake_registry, flake_registry, name, tag
):
    via_container = manifest(container_flake_registry, name, tag)
    assert via_container.status_code == 200, (
        via_container.text + container_flake_registry.builder_log.read_text()
    )
    assert "building with Nix 2.26" in container_flake_registry.builder_log.read_text()
    via_host = manifest(flake_registry, name, tag)
    digest = via_host.headers["Docker-Content-Digest"]
    assert via_container.headers["Docker-Content-Digest"] == digest
    # The same SBOM too: the flake's and its inputs' NAR hashes in one spelling.
    index = [r.get(f"/v2/{name}/referrers/{digest}")
             for r in (container_flake_registry, flake_registry)]  # fmt: skip
    assert index[0].status_code == 200 and index[0].content == index[1].content


def test_google_cloud_mode_refuses_what_local_mode_refuses(container_flake_registry):
    registry = container_flake_registry
    assert "flake.lock" in error_of(manifest(registry, "greeting", "unlocked"))
    # Nix 2.26 says "pure evaluation mode".
    assert "is forbidden in pure eval" in error_of(manifest(registry, "pwn", "hostile"))
    assert "did you mean greeting?" in error_of(manifest(registry, "greetin"))
    pinned = "to a path on the registry's machine"
    assert pinned in error_of(manifest(registry, "pwn", "secret-lock"))
    assert pinned in error_of(manifest(registry, "greeting", "outside"))


def test_a_path_source_holding_a_flake_is_read_as_one(make_registry, flake, flake_registry):
    """Its working tree (.git left out, as git's own checkout has none): the same packages
    as the repository's HEAD."""
    reg = make_registry(
        NIXERY_PKGS_PATH=str(flake.path), NIX_TIMEOUT="30", NIXERY_EVAL_ALLOW=eval_allow(flake)
    )
    assert manifest(reg, "greeting").status_code == 200, reg.log()
    revision = PathSource(flake.path).resolve("latest")
    page = report_of(reg, "greeting", revision)
    assert page["flake"] and page["left_out"] == ["cacert"]
    assert manifest(flake_registry, "greeting").status_code == 200
    from_git = report_of(flake_registry, "greeting", master(flake))
    assert page["packages"] == from_git["packages"]


def test_a_path_source_flake_edited_in_place_is_read_anew(flake, tmp_path, monkeypatch):
    """The directory stays, its revision (content hash) changes: so does its copy."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    tree = tmp_path / "flake"
    shutil.copytree(flake.path, tree, symlinks=True)
    source, nix = PathSource(tree, ttl=0), Nix(REPO / "prepare-image", 60, [flake.inputs])
    outputs = []
    for text in ("one", "two"):
        (tree / "greeting.txt").write_text(text)
        revision = source.resolve("latest")
        assert revision is not None
        origin = source.flake_origin(revision)
        with nix.build(source.checkout(revision), ["greeting"], "x86_64-linux", flake=origin) as b:
            outputs.append(b.outputs["greeting"])
    assert outputs[0] != outputs[1]


def test_a_flake_without_inputs_needs_no_lock(tmp_path, monkeypatch):
    """As nixpkgs' own flake: nothing to pin. Only evaluated: its builder is not on the host."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    (tmp_path / "flake.nix").write_text(
        "{ outputs = { self }: { legacyPackages.x86_64-linux.tiny = derivation {\n"
        '  name = "tiny"; system = "x86_64-linux"; builder = "/nonexistent"; }; }; }\n'
    )
    source = PathSource(tmp_path)
    revision = source.resolve("latest")
    assert revision is not None
    nix = Nix(REPO / "prepare-image", 60)
    locked = nix._lock(tmp_path, source.flake_origin(revision), math.inf)
    assert locked is not None and locked.lock.inputs == ()
    plan = nix._plan(tmp_path, ["tiny", "cacert"], "x86_64-linux", math.inf, locked, ["cacert"])
    assert [p["name"] for p in plan["packages"]] == ["tiny"] and plan["absent"] == ["cacert"]


def test_an_input_of_an_input_the_lock_lacks_is_refused_naming_the_lock(tmp_path, monkeypatch):
    """The flake's own inputs are pinned, an input's input is not: Nix calls that input's
    outputs without it, which reads as the lock's fault. Only evaluated."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    (tmp_path / "bb").mkdir()
    (tmp_path / "bb" / "x").write_text("tiny")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "flake.nix").write_text(
        f'{{ inputs.bb = {{ url = "git+file://{tmp_path}/bb"; flake = false; }};\n'
        '  outputs = { self, bb }: { name = builtins.readFile "${bb}/x"; }; }\n'
    )
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "flake.nix").write_text(
        f'{{ inputs.sub.url = "git+file://{tmp_path}/sub";\n'
        "  outputs = { self, sub }: { legacyPackages.x86_64-linux.tiny = derivation {\n"
        '    inherit (sub) name; system = "x86_64-linux"; builder = "/nonexistent"; }; }; }\n'
    )
    for repo in ("bb", "sub"):
        git(tmp_path / repo, "init", "-q", "-b", "master")
        git(tmp_path / repo, "add", "-A")
        git(tmp_path / repo, "commit", "-qm", repo)
    top = tmp_path / "top"
    lock(top)
    locked = json.loads((top / "flake.lock").read_text())
    del locked["nodes"]["sub"]["inputs"], locked["nodes"]["bb"]
    (top / "flake.lock").write_text(json.dumps(locked))
    source = PathSource(top)
    revision = source.resolve("latest")
    assert revision is not None
    nix = Nix(REPO / "prepare-image", 60, [tmp_path])
    with pytest.raises(BuildFailed, match=r"flake\.lock does not pin the input bb of one of"):
        nix._plan(top, ["tiny"], "x86_64-linux", math.inf,
                  nix._lock(top, source.flake_origin(revision), math.inf))  # fmt: skip


def test_the_flakes_store_copies_are_kept_from_the_collector_while_cached(tmp_path, monkeypatch):
    """A collection between locking and evaluating must not fail the build as if the flake
    were broken: the copies are roots (nix-store --delete refuses a live path; a whole
    collection would touch every engineer's store here)."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    (tmp_path / "flake.nix").write_text(
        "{ outputs = { self }: { legacyPackages.x86_64-linux.tiny = derivation {\n"
        f'  name = "tiny"; system = "x86_64-linux"; builder = "/nonexistent"; '
        f'nonce = "{time.time_ns()}"; }}; }}; }}\n'
    )
    source = PathSource(tmp_path)
    revision = source.resolve("latest")
    assert revision is not None
    nix = Nix(REPO / "prepare-image", 60)
    locked = nix._lock(tmp_path, source.flake_origin(revision), math.inf)
    assert locked is not None
    for path in (locked.source, locked.prepare):
        deleted = subprocess.run(["nix-store", "--delete", path], capture_output=True, text=True)
        assert deleted.returncode != 0 and "still alive" in deleted.stderr, deleted.stderr
    plan = nix._plan(tmp_path, ["tiny"], "x86_64-linux", math.inf, locked)
    assert [p["name"] for p in plan["packages"]] == ["tiny"]


def test_a_git_input_the_network_cannot_fetch_is_transient(tmp_path, monkeypatch):
    """Its host unreachable (no network here): a 503 to retry, not a failure remembered."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    url = "https://nixery-test.invalid/r.git"
    (tmp_path / "flake.nix").write_text(
        f'{{ inputs.bb = {{ url = "git+{url}"; flake = false; }};\n'
        "  outputs = { self, bb }: { legacyPackages.x86_64-linux.tiny = derivation {\n"
        '    name = builtins.readFile "${bb}/x"; system = "x86_64-linux";\n'
        '    builder = "/nonexistent"; }; }; }\n'
    )
    pinned = {"type": "git", "url": url}
    locked = {**pinned, "rev": "0" * 40, "narHash": WRONG_HASH, "lastModified": 1, "revCount": 1}
    nodes = {"root": {"inputs": {"bb": "bb"}},
             "bb": {"flake": False, "locked": locked, "original": pinned}}  # fmt: skip
    (tmp_path / "flake.lock").write_text(json.dumps({"nodes": nodes, "root": "root", "version": 7}))
    source = PathSource(tmp_path)
    revision = source.resolve("latest")
    assert revision is not None
    nix = Nix(REPO / "prepare-image", 60)
    with pytest.raises(BuildInterrupted):
        nix._plan(tmp_path, ["tiny"], "x86_64-linux", math.inf,
                  nix._lock(tmp_path, source.flake_origin(revision), math.inf))  # fmt: skip


def test_step_one_reads_no_host_file_where_flakes_are_enabled_globally(tmp_path, monkeypatch):
    """The restricted step that copies the checkout evaluates the flake's ``inputs``: with
    flakes on in the host's nix.conf, fetchTree would be there to copy a host file."""
    features = "experimental-features = nix-command flakes\n"
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG + features)
    secret = tmp_path / "secret"
    secret.write_text(f"secret {time.time_ns()}\n")
    tree = tmp_path / "flake"
    tree.mkdir()
    (tree / "flake.nix").write_text(
        "{ inputs = builtins.seq (builtins.fetchTree"
        f' {{ type = "path"; path = "{secret}"; narHash = "{WRONG_HASH}"; }}) {{ }};\n'
        "  outputs = { self }: { }; }\n"
    )
    source = PathSource(tree)
    revision = source.resolve("latest")
    assert revision is not None
    nix = Nix(REPO / "prepare-image", 60)
    with pytest.raises(BuildFailed) as raised:
        nix._lock(tree, source.flake_origin(revision), math.inf)
    assert not Path(secret_store_path(secret)).exists(), "the file was copied into the store"
    assert nar_hashes(secret)[0] not in str(raised.value)


def test_two_platforms_of_one_build_copy_the_flake_once(tmp_path, monkeypatch):
    """Both evaluations ask for the flake at once: step 1 runs once, the other waits."""
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    (tmp_path / "flake.nix").write_text(
        f"{{ outputs = {{ self }}: {{ nonce = {time.time_ns()}; }}; }}\n"
    )
    source = PathSource(tmp_path)
    revision = source.resolve("latest")
    assert revision is not None
    nix = Nix(REPO / "prepare-image", 60)
    steps: list[str] = []
    run = nix._run

    def counted(cmd: list[str], what: str, *args, **kwargs) -> str:
        steps.append(what)
        return run(cmd, what, *args, **kwargs)

    monkeypatch.setattr(nix, "_run", counted)
    origin = source.flake_origin(revision)
    locked: list[object] = []
    threads = [threading.Thread(target=lambda: locked.append(nix._lock(tmp_path, origin, math.inf)))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(locked) == 2 and locked[0] == locked[1]
    assert steps.count("reading the flake") == 1
