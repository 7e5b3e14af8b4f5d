"""The SBOM of an image, from a closure graph and the package set's meta (no build needed;
the SBOM of a real build is checked with oras in test_artifacts.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from nixery.errors import ConfigError
from nixery.nix.path_info import PackageMeta, StorePath, nar_hash_hex, parse_meta, parse_path_info
from nixery.nix.runner import NIX_COMMAND
from nixery.pipeline.sbom import image_sbom
from nixery.pipeline.signing import PemSigner
from nixery.records import Revision
from nixery.store_names import parse_store_name
from tests.helpers.sbom import assert_valid_cyclonedx

REVISION = Revision("git:https://example.org/pkgs.git", "a" * 40)
APP = "/nix/store/" + "1" * 32 + "-app-1.0"
LIB = "/nix/store/" + "2" * 32 + "-libfoo-2.3-lib"
DATA = "/nix/store/" + "3" * 32 + "-source"
CLOSURE = {
    APP: StorePath(APP, (LIB, DATA), 100, "sha256-" + base64.b64encode(b"\1" * 32).decode()),
    LIB: StorePath(LIB, (), 200, "sha256:" + "0" * 52),
    DATA: StorePath(DATA, (), 300, "sha256:" + "ab" * 32),
}
META = parse_meta(
    [
        {
            "path": APP, "pname": "app", "version": "1.0", "description": "An app",
            "homepage": "https://app.example", "licenses": [{"id": "MIT"}, {"name": "custom"}],
        },
    ]
)  # fmt: skip


def sbom(**changes: object) -> bytes:
    args: dict[str, object] = {
        "title": "app", "revision": REVISION, "system": "x86_64-linux", "roots": [APP],
        "closure": CLOSURE, "meta": META,
    }  # fmt: skip
    return image_sbom(**{**args, **changes})  # type: ignore[arg-type]


def test_the_sbom_is_byte_identical_for_the_same_image_and_differs_for_another():
    assert sbom() == sbom()
    assert sbom() != sbom(revision=Revision(REVISION.source, "b" * 40))
    assert json.loads(sbom())["serialNumber"] != json.loads(sbom(title="other"))["serialNumber"]


def test_the_sbom_is_valid_cyclonedx_1_6():
    assert_valid_cyclonedx(sbom())


def test_every_store_path_is_a_component_with_its_hash_and_what_meta_says():
    bom = json.loads(sbom())
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    assert bom["serialNumber"].startswith("urn:uuid:")
    components = {c["bom-ref"]: c for c in bom["components"]}
    assert set(components) == set(CLOSURE)
    for path, info in CLOSURE.items():
        props = {p["name"]: p["value"] for p in components[path]["properties"]}
        assert props["nix:store-path"] == path
        # In SRI form, whichever form Nix printed (up to 2.18, base-32).
        assert (
            props["nix:nar-hash"]
            == "sha256-" + base64.b64encode(bytes.fromhex(nar_hash_hex(info.nar_hash))).decode()
        )
        assert components[path]["hashes"] == [
            {"alg": "SHA-256", "content": nar_hash_hex(info.nar_hash)}
        ]
    app = components[APP]
    assert (app["type"], app["name"], app["version"]) == ("application", "app", "1.0")
    assert app["description"] == "An app"
    assert app["externalReferences"] == [{"type": "website", "url": "https://app.example"}]
    assert app["licenses"] == [{"license": {"id": "MIT"}}, {"license": {"name": "custom"}}]
    # Paths the package set says nothing of are named from the store path.
    assert (components[LIB]["name"], components[LIB]["version"]) == ("libfoo", "2.3-lib")
    assert components[DATA]["name"] == "source" and "version" not in components[DATA]


def test_the_dependencies_are_the_closure_graph_under_the_image():
    bom = json.loads(sbom())
    graph = {d["ref"]: d["dependsOn"] for d in bom["dependencies"]}
    assert graph == {"image": [APP], APP: [LIB, DATA], LIB: [], DATA: []}
    image = bom["metadata"]["component"]
    props = {p["name"]: p["value"] for p in image["properties"]}
    assert (image["type"], image["bom-ref"], image["name"]) == ("container", "image", "app")
    assert props["nixery:package-set:source"] == REVISION.source
    assert props["nixery:package-set:revision"] == REVISION.value


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/nix/store/" + "x" * 32 + "-bash-interactive-5.2-p15", ("bash-interactive", "5.2-p15")),
        ("/nix/store/" + "x" * 32 + "-hello", ("hello", "")),
        ("/nix/store/" + "x" * 32 + "-glibc-2.37-8-bin", ("glibc", "2.37-8-bin")),
        (
            "/nix/store/" + "x" * 32 + "-python3.11-requests-2.31.0",
            ("python3.11-requests", "2.31.0"),
        ),
    ],
)
def test_store_names_split_as_nix_parses_derivation_names(path, expected):
    assert parse_store_name(path) == expected


def test_nar_hashes_become_the_hex_sha256_of_the_nar(tmp_path):
    """Checked against Nix itself: the SHA-256 of `nix-store --dump` is the NAR hash."""
    (tmp_path / "file").write_text("an SBOM needs real hashes\n")
    path = subprocess.run(
        ["nix-store", "--add", str(tmp_path / "file")], capture_output=True, text=True, check=True
    ).stdout.strip()
    info = subprocess.run(
        ["nix", *NIX_COMMAND, "path-info", "--json", path],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    nar = subprocess.run(["nix-store", "--dump", path], capture_output=True, check=True).stdout
    expected = hashlib.sha256(nar).hexdigest()
    assert nar_hash_hex(parse_path_info(info)[path].nar_hash) == expected
    assert nar_hash_hex("sha256-" + base64.b64encode(bytes.fromhex(expected)).decode()) == expected
    assert nar_hash_hex("sha256:" + expected) == expected


def test_meta_keeps_the_first_entry_of_a_path_and_only_known_license_fields():
    meta = parse_meta(
        [
            {"path": APP, "pname": "a", "version": "1", "description": "", "homepage": "",
             "licenses": [{"id": "MIT", "url": "x"}, {"name": ""}]},
            {"path": APP, "pname": "b", "version": "2", "description": "", "homepage": "",
             "licenses": []},
        ]
    )  # fmt: skip
    assert meta == {APP: PackageMeta("a", "1", "", "", (("id", "MIT"),))}


def test_a_signing_key_that_cannot_be_used_stops_the_start(tmp_path):
    (tmp_path / "garbage.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="NIXERY_SIGNING_KEY"):
        PemSigner.load(tmp_path / "garbage.pem")
    with pytest.raises(ConfigError, match="NIXERY_SIGNING_KEY"):
        PemSigner.load(tmp_path / "missing.pem")
    ed = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    (tmp_path / "ed.pem").write_bytes(ed)
    with pytest.raises(ConfigError, match="ECDSA or RSA"):
        PemSigner.load(tmp_path / "ed.pem")
