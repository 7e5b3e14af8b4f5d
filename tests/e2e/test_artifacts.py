"""What an image is made of, read with real clients: oras finds and fetches each image's SBOM
through the referrers API, in both modes, and the SBOM names every store path of the image
with Nix's own hash of it; cosign verifies the signatures of a registry given a key. oras and
cosign come from Debian 13 (scripts/get-oci-tools.sh)."""

from __future__ import annotations

import base64
import gzip
import http.server
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import threading
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from nixery.config import Env, build_settings
from nixery.job import BuildJob
from nixery.nix.path_info import nar_hash_hex, parse_path_info
from nixery.nix.runner import NIX_COMMAND
from nixery.oci.cosign import SIGNATURE_ANNOTATION, SIMPLE_SIGNING
from nixery.pipeline import builder as builder_module
from nixery.pipeline.builder import Builder
from nixery.pipeline.sbom import SBOM_TYPE
from nixery.records import Failure
from nixery.request import parse_name
from nixery.sources.path import PathSource
from tests.helpers.emulators import GcpRegistry
from tests.helpers.fakes import MemoryBlobStore, MemoryState
from tests.helpers.protocol import DOCKER, OCI
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, Registry
from tests.helpers.sbom import assert_valid_cyclonedx

pytestmark = pytest.mark.e2e

TOOLS = Path(__file__).resolve().parents[2] / "var" / "oci-tools" / "bin"
IMAGE = "shell/hello"


@pytest.fixture(scope="module", params=["local", "gcp"])
def target(request):
    return request.getfixturevalue({"local": "registry", "gcp": "gcp_registry"}[request.param])


def runner(name: str, home: Path):
    """Runs oras or cosign with a scratch HOME (their credentials and caches)."""
    if not (TOOLS / name).exists():
        pytest.fail(f"{TOOLS / name} is missing: run scripts/setup.sh --test")

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TOOLS / name), *args], env={**os.environ, "HOME": str(home), **env},
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    return run


@pytest.fixture(scope="module")
def oras(tmp_path_factory: pytest.TempPathFactory):
    return runner("oras", tmp_path_factory.mktemp("oras-home"))


def digest_of(registry, name: str, accept: str = OCI) -> str:
    response = registry.get(f"/v2/{name}/manifests/latest", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


def store_paths_in(registry, name: str) -> set[str]:
    """The store paths the image's layers hold: its closure, read from the image itself."""
    manifest = registry.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI}).json()
    paths = set()
    for layer in manifest["layers"]:
        blob = registry.get(f"/v2/{name}/blobs/{layer['digest']}", allow_redirects=True)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.content))) as tar:
            for member in tar.getnames():
                parts = member.strip("./").split("/")
                if parts[:2] == ["nix", "store"] and len(parts) >= 3:
                    paths.add("/nix/store/" + parts[2])
    return paths


def discover(oras, registry, reference: str) -> list[dict]:
    found = oras("discover", "--plain-http", "--format", "json", f"{registry.host}/{reference}")
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)["manifests"]


@pytest.mark.parametrize("accept", [OCI, DOCKER])
def test_oras_discovers_and_pulls_an_sbom_naming_every_store_path_with_its_hash(
    target, oras, tmp_path, accept
):
    digest = digest_of(target, IMAGE, accept)
    (sbom,) = discover(oras, target, f"{IMAGE}@{digest}")
    assert sbom["artifactType"] == SBOM_TYPE
    # Filtered by type, as scanners ask for it.
    typed = oras("discover", "--plain-http", "--format", "json", "--artifact-type", SBOM_TYPE,
                 f"{target.host}/{IMAGE}@{digest}")  # fmt: skip
    assert typed.returncode == 0 and json.loads(typed.stdout)["manifests"] == [sbom]

    pulled = oras(
        "pull", "--plain-http", "-o", str(tmp_path), f"{target.host}/{IMAGE}@{sbom['digest']}"
    )
    assert pulled.returncode == 0, pulled.stderr
    assert_valid_cyclonedx((tmp_path / "sbom.cdx.json").read_bytes())
    bom = json.loads((tmp_path / "sbom.cdx.json").read_text())
    components = {c["bom-ref"]: c for c in bom["components"]}

    closure = store_paths_in(target, IMAGE)
    assert closure and set(components) == closure
    info = subprocess.run(
        ["nix", *NIX_COMMAND, "path-info", "--json", *sorted(closure)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for path, store_path in parse_path_info(info).items():
        assert components[path]["hashes"] == [
            {"alg": "SHA-256", "content": nar_hash_hex(store_path.nar_hash)}
        ], path
    hello = next(c for c in bom["components"] if c["name"] == "hello")
    assert hello["type"] == "application" and hello["description"]


def test_sbom_digests_are_the_same_in_two_fresh_registries(make_registry):
    """Same request, same revision: the same SBOM, its artifact manifests and referrers."""
    answers = []
    for _ in range(2):
        registry = make_registry()
        subject = digest_of(registry, "htop")
        index = registry.get(f"/v2/htop/referrers/{subject}")
        assert index.status_code == 200
        (descriptor,) = index.json()["manifests"]
        artifact = registry.get(f"/v2/htop/manifests/{descriptor['digest']}").json()
        answers.append(
            (subject, index.content, descriptor["digest"], artifact["layers"][0]["digest"])
        )
    assert answers[0] == answers[1]


def test_a_package_set_in_two_places_gives_one_digest_and_names_neither(make_registry, tmp_path):
    """A path source is named by its content hash, never by where it lies on the server:
    not in the image key, the manifest, the config's labels, the SBOM or the build page."""
    answers = []
    for place in ("srv/pkgs", "elsewhere/other-set"):
        copy = shutil.copytree(DEMO, tmp_path / place, symlinks=True)
        registry = make_registry(
            NIXERY_PKGS_PATH=str(copy), NIXERY_EVAL_ALLOW=f"{DEMO_EVAL_ALLOW}:{copy}"
        )
        subject = digest_of(registry, "htop")
        manifest = registry.get(f"/v2/htop/manifests/{subject}")
        config = registry.get(f"/v2/htop/blobs/{manifest.json()['config']['digest']}")
        (descriptor,) = registry.get(f"/v2/htop/referrers/{subject}").json()["manifests"]
        artifact = registry.get(f"/v2/htop/manifests/{descriptor['digest']}").json()
        sbom = registry.get(f"/v2/htop/blobs/{artifact['layers'][0]['digest']}")
        (build,) = registry.get("/api/v1/registry").json()["builds"]
        page = registry.get(f"/api/v1/builds/{build['key']}")
        front = registry.get("/api/v1/registry")
        for what in (manifest, config, sbom, page, front):
            assert what.status_code == 200, what.text
            assert str(tmp_path) not in what.text, what.url
        assert "org.opencontainers.image.source" not in config.json()["config"]["Labels"]
        answers.append((subject, build["key"], descriptor["digest"]))
    assert answers[0] == answers[1]


def test_with_a_public_url_the_image_names_its_build_page(make_registry):
    """``org.opencontainers.image.url``: the image's page on this registry, at the URL it is
    reached by (NIXERY_PUBLIC_URL: a registry behind a proxy cannot tell from itself)."""
    registry = make_registry()
    public = make_registry(NIXERY_PUBLIC_URL=registry.url)  # reached here at the first's URL
    manifest = public.get("/v2/htop/manifests/latest", headers={"Accept": OCI}).json()
    url = manifest["annotations"]["org.opencontainers.image.url"]
    assert url.startswith(f"{registry.url}/builds/")
    page = public.get(url.removeprefix(registry.url))
    assert page.status_code == 200 and "htop" in page.text
    plain = registry.get("/v2/htop/manifests/latest", headers={"Accept": OCI}).json()
    assert "org.opencontainers.image.url" not in plain["annotations"], "none unless configured"


# Signatures, checked with cosign


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory):
    return runner("cosign", tmp_path_factory.mktemp("cosign-home"))


def key_pair(directory: Path) -> tuple[Path, Path]:
    """An ECDSA P-256 key as `openssl genpkey` writes it, and its public key."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "signing.pem", directory / "signing.pub"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def verify(cosign, registry, reference: str, public: Path) -> subprocess.CompletedProcess[str]:
    """cosign verify against a plain-HTTP registry without a transparency log."""
    return cosign(
        "verify", "--key", str(public), "--insecure-ignore-tlog", "--allow-http-registry",
        f"{registry.host}/{reference}",
    )  # fmt: skip


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory):
    """A registry that signs with a PEM key, and that key's public half."""
    root = tmp_path_factory.mktemp("signing")
    private, public = key_pair(root)
    registry = Registry(root / "storage", NIX_TIMEOUT="3", NIXERY_SIGNING_KEY=str(private))
    yield registry.start(), public
    registry.stop()


@pytest.mark.parametrize("accept", [OCI, DOCKER])
def test_cosign_verify_accepts_each_signed_manifest(signing, cosign, accept):
    registry, public = signing
    digest = digest_of(registry, IMAGE, accept)
    result = verify(cosign, registry, f"{IMAGE}@{digest}", public)
    assert result.returncode == 0, result.stderr
    (verified,) = json.loads(result.stdout)
    assert verified["critical"]["image"]["docker-manifest-digest"] == digest
    # The signature is one of the image's referrers, beside its SBOM.
    index = registry.get(f"/v2/{IMAGE}/referrers/{digest}").json()
    assert sorted(m["artifactType"] for m in index["manifests"]) == [
        SBOM_TYPE, SIMPLE_SIGNING
    ]  # fmt: skip


def test_cosign_verify_rejects_another_key_and_a_tampered_signature(signing, cosign, tmp_path):
    registry, public = signing
    digest = digest_of(registry, "htop")
    assert verify(cosign, registry, f"htop@{digest}", public).returncode == 0
    _, other = key_pair(tmp_path)
    assert verify(cosign, registry, f"htop@{digest}", other).returncode != 0
    # Another signature, of other bytes, in the stored signature manifest.
    tag = digest.replace(":", "-") + ".sig"
    served = registry.get(f"/v2/htop/manifests/{tag}", headers={"Accept": OCI})
    stored = served.json()
    annotations = stored["layers"][0]["annotations"]
    forged = ec.generate_private_key(ec.SECP256R1()).sign(b"other", ec.ECDSA(hashes.SHA256()))
    annotations[SIGNATURE_ANNOTATION] = base64.b64encode(forged).decode()
    with sqlite3.connect(registry.storage / "state.sqlite3") as db:
        db.execute(
            "UPDATE manifests SET body = ? WHERE digest = ?",
            (json.dumps(stored).encode(), served.headers["Docker-Content-Digest"]),
        )
    rejected = verify(cosign, registry, f"htop@{digest}", public)
    assert rejected.returncode != 0
    assert "invalid signature" in rejected.stderr.lower(), rejected.stderr


def test_without_a_key_nothing_is_signed(registry, cosign, tmp_path):
    digest = digest_of(registry, IMAGE)
    _, public = key_pair(tmp_path)
    tag = digest.replace(":", "-") + ".sig"
    assert registry.get(f"/v2/{IMAGE}/manifests/{tag}").status_code == 404
    assert verify(cosign, registry, f"{IMAGE}@{digest}", public).returncode != 0


# Cloud KMS cannot run here: its asymmetricSign API is a loopback fake holding an ECDSA key
# (as KMS holds the real one), the only fake in these tests. The rest is real: the registry
# function and builder on the emulators, and cosign verifying what they serve.


class FakeKms(http.server.ThreadingHTTPServer):
    KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/images/cryptoKeyVersions/1"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeKmsHandler)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.tokens: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class FakeKmsHandler(http.server.BaseHTTPRequestHandler):
    server: FakeKms

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == f"/v1/{FakeKms.KEY}:asymmetricSign"
        self.server.tokens.append(self.headers["Authorization"])
        digest = base64.b64decode(request["digest"]["sha256"])
        assert int(request["digestCrc32c"]) == zlib.crc32(digest)
        signature = self.server.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        body = json.dumps({
            "signature": base64.b64encode(signature).decode(),
            "signatureCrc32c": str(zlib.crc32(signature)),
            "verifiedDigestCrc32c": True,
            "name": FakeKms.KEY,
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_cosign_verify_accepts_images_signed_through_cloud_kms(emulators, cosign, tmp_path):
    kms = FakeKms()
    threading.Thread(target=kms.serve_forever, daemon=True).start()
    public = tmp_path / "kms.pub"
    public.write_bytes(
        kms.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    registry = GcpRegistry(
        tmp_path / "gcp", emulators, NIXERY_SIGNING_KMS_KEY=FakeKms.KEY,
        NIXERY_KMS_ENDPOINT=kms.url,
    )  # fmt: skip
    try:
        registry.start()
        for accept in (OCI, DOCKER):
            digest = digest_of(registry, IMAGE, accept)
            result = verify(cosign, registry, f"{IMAGE}@{digest}", public)
            assert result.returncode == 0, result.stderr
        _, other = key_pair(tmp_path)
        assert verify(cosign, registry, f"{IMAGE}@{digest}", other).returncode != 0
        assert kms.tokens and all(t.startswith("Bearer ") for t in kms.tokens)
    finally:
        registry.stop()
        kms.shutdown()


# Publish order: nothing of an image is visible unless its SBOM (and signature) are


class BrokenSigner:
    def sign(self, payload: bytes) -> bytes:
        raise ConnectionError("the signing service is unreachable")


def broken_sbom(**_: object) -> bytes:
    return nar_hash_hex("md5:0123")  # a hash the SBOM cannot spell: ValueError


@pytest.mark.parametrize("broken", ["sbom", "signature"])
def test_a_failed_sbom_or_signature_step_publishes_nothing(broken, monkeypatch):
    """An SBOM that cannot be made fails the build, remembered like a failed derivation; a
    signing service that cannot be reached is trouble that passes: the exception reaches the
    queue (local mode answers 503 and the next pull builds again; a builder answers 500 and
    Cloud Tasks retries). Either way nothing is published."""
    if broken == "sbom":
        monkeypatch.setattr(builder_module, "image_sbom", broken_sbom)
    source, state = PathSource(DEMO), MemoryState()
    settings = build_settings(Env({"NIXERY_EVAL_ALLOW": DEMO_EVAL_ALLOW}))
    builder = Builder.from_settings(
        settings, source=source, blobs=MemoryBlobStore(), state=state.ports(), popularity={},
        signer=BrokenSigner() if broken == "signature" else None,
    )  # fmt: skip
    job = BuildJob.of(parse_name("hello"), source.resolve("latest"))
    if broken == "sbom":
        builder.run(job)
        failure = state.status(job.key)
        assert isinstance(failure, Failure) and "SBOM could not be made" in failure.message
    else:
        with pytest.raises(ConnectionError):
            builder.run(job)
        assert state.status(job.key) is None
