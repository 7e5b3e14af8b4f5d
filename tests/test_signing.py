"""Signed blob URLs. IAM signBlob cannot run here: its path is tested against a loopback fake
of the IAM Credentials API that signs with a locally generated key, as IAM would with the
service account's Google-held key. The key-file path signs with a locally generated key."""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import threading
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from emulators import service_account_key
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from nixery.gcp.signing import IamSigner, SignedUrls

EMAIL = "registry@nixery-test.iam.gserviceaccount.com"


def string_to_sign(url: str) -> bytes:
    """Rebuilds the V4 string-to-sign of a GET URL, to check its signature independently."""
    import hashlib

    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    params = sorted((k, v[0]) for k, v in query.items() if k != "X-Goog-Signature")
    from urllib.parse import quote

    canonical_query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    canonical = "\n".join(
        ["GET", parsed.path, canonical_query, f"host:{parsed.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    scope = query["X-Goog-Credential"][0].split("/", 1)[1]
    return "\n".join(
        [
            "GOOG4-RSA-SHA256",
            query["X-Goog-Date"][0],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    ).encode()


def assert_signed_by(url: str, key: rsa.RSAPrivateKey) -> None:
    signature = binascii.unhexlify(parse_qs(urlparse(url).query)["X-Goog-Signature"][0])
    key.public_key().verify(signature, string_to_sign(url), padding.PKCS1v15(), hashes.SHA256())


def sign_with(credentials, ttl: float = 300):
    bucket = storage.Client(project="p", credentials=AnonymousCredentials()).bucket("b")

    def sign(name: str, expiry: timedelta) -> str:
        return bucket.blob(name).generate_signed_url(
            version="v4", expiration=expiry, method="GET", credentials=credentials
        )

    return SignedUrls(sign, ttl)


def test_key_file_signing_verifies_and_expires_as_set(tmp_path):
    key = service_account_key(tmp_path / "key.json")
    creds = service_account.Credentials.from_service_account_file(str(tmp_path / "key.json"))
    url = sign_with(creds, ttl=120).url("blobs/sha256/abc")
    query = parse_qs(urlparse(url).query)
    assert query["X-Goog-Expires"] == ["120"]
    assert query["X-Goog-Credential"][0].startswith(EMAIL + "/")
    assert_signed_by(url, key)


@pytest.fixture
def fake_iam():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    calls: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append({"path": self.path, "auth": self.headers["Authorization"]})
            if self.headers["Authorization"] != "Bearer token-1":
                self.send_response(401)
                self.end_headers()
                return
            signed = key.sign(
                base64.b64decode(body["payload"]), padding.PKCS1v15(), hashes.SHA256()
            )
            reply = json.dumps({"keyId": "k", "signedBlob": base64.b64encode(signed).decode()})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", key, calls
    server.shutdown()


def test_iam_signing_calls_sign_blob_and_is_reused(fake_iam):
    endpoint, key, calls = fake_iam
    signer = IamSigner(EMAIL, lambda: "token-1", endpoint)
    urls = sign_with(signer, ttl=300)
    url = urls.url("blobs/sha256/abc")
    assert_signed_by(url, key)
    assert calls == [
        {"path": f"/v1/projects/-/serviceAccounts/{EMAIL}:signBlob", "auth": "Bearer token-1"}
    ]
    assert urls.url("blobs/sha256/abc") == url, "reused while most of its life remains"
    assert len(calls) == 1
    urls.url("blobs/sha256/def")
    assert len(calls) == 2


def test_signed_urls_are_renewed_after_half_their_life():
    now = [1000.0]
    signed: list[str] = []

    def sign(name: str, expiry: timedelta) -> str:
        signed.append(name)
        return f"{name}?{len(signed)}"

    urls = SignedUrls(sign, ttl=100, clock=lambda: now[0])
    first = urls.url("x")
    now[0] += 49
    assert urls.url("x") == first
    now[0] += 2
    assert urls.url("x") != first
