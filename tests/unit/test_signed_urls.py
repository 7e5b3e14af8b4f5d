"""Signed blob URLs. IAM signBlob cannot run here: its path is tested against a loopback fake
of the IAM Credentials API that signs with a locally generated key, as IAM would with the
service account's Google-held key. The key-file path signs with a locally generated key."""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import threading
import time
import urllib.error
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from nixery.gcp import signed_urls
from nixery.gcp.signed_urls import IamSigner, SignedUrls
from tests.helpers.emulators import service_account_key

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
    refusals: list[int | float] = []  # answered first, in turn: a status, or seconds to hang

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append({"path": self.path, "auth": self.headers["Authorization"]})
            if refusals:
                refusal = refusals.pop(0)
                if isinstance(refusal, float):
                    time.sleep(refusal)
                    return
                self.send_response(refusal)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"error": {"code": refusal}}).encode())
                return
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
    yield f"http://127.0.0.1:{server.server_address[1]}", key, calls, refusals
    server.shutdown()


def test_iam_signing_calls_sign_blob_and_is_reused(fake_iam):
    endpoint, key, calls, _ = fake_iam
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


def test_iam_signing_retries_429_and_5xx_with_growing_waits(fake_iam):
    endpoint, key, calls, refusals = fake_iam
    refusals += [429, 503, 500]
    waits: list[float] = []
    signer = IamSigner(EMAIL, lambda: "token-1", endpoint, backoff=0.01, sleep=waits.append)
    assert_signed_by(sign_with(signer).url("blobs/sha256/abc"), key)
    assert len(calls) == 4
    assert len(waits) == 3
    assert all(0.005 * 2**i <= wait <= 0.01 * 2**i for i, wait in enumerate(waits))


@pytest.mark.parametrize(
    ("status", "calls_made"),
    [(400, 1), (403, 1), (503, 3)],
    ids=["a client error is not retried", "nor a refusal", "a 5xx until the attempts end"],
)
def test_iam_signing_raises_the_last_error(fake_iam, status: int, calls_made: int):
    endpoint, _, calls, refusals = fake_iam
    refusals += [status] * 10
    signer = IamSigner(EMAIL, lambda: "token-1", endpoint, attempts=3, sleep=lambda _: None)
    with pytest.raises(urllib.error.HTTPError) as raised:
        sign_with(signer).url("blobs/sha256/abc")
    assert raised.value.code == status
    assert len(calls) == calls_made


def test_iam_signing_gives_up_by_its_deadline(fake_iam):
    """Refused without end, or left unanswered, signing fails within its deadline."""
    endpoint, _, calls, refusals = fake_iam
    refusals += [503] * 100
    signer = IamSigner(EMAIL, lambda: "token-1", endpoint, attempts=100, deadline=0.5)
    start = time.monotonic()
    with pytest.raises(urllib.error.HTTPError):
        sign_with(signer).url("blobs/sha256/abc")
    # Not a timing test: without the deadline, 100 attempts would wait for minutes.
    assert time.monotonic() - start < 10
    assert 2 <= len(calls) < 10  # waits of 0.25s at most, then doubling

    refusals[:] = [20.0]  # a call that hangs
    calls.clear()
    signer = IamSigner(EMAIL, lambda: "token-1", endpoint, timeout=30, deadline=0.5)
    start = time.monotonic()
    with pytest.raises((urllib.error.URLError, TimeoutError)):
        sign_with(signer).url("blobs/sha256/abc")
    assert time.monotonic() - start < 10, "the call was cut off, not waited out"
    assert len(calls) == 1


def test_urls_signed_through_iam_live_at_most_12_hours(fake_iam, tmp_path, caplog):
    endpoint, key, _, _ = fake_iam
    signer = IamSigner(EMAIL, lambda: "token-1", endpoint)
    assert signed_urls.IAM_MAX_TTL == 12 * 3600
    assert signed_urls.url_ttl_for(signer, 300) == 300
    week = 7 * 24 * 3600
    assert signed_urls.url_ttl_for(signer, week) == 12 * 3600
    assert "NIXERY_URL_TTL" in caplog.text
    url = sign_with(signer, ttl=signed_urls.url_ttl_for(signer, week)).url("blobs/sha256/abc")
    assert parse_qs(urlparse(url).query)["X-Goog-Expires"] == ["43200"]
    assert_signed_by(url, key)
    service_account_key(tmp_path / "key.json")
    creds = service_account.Credentials.from_service_account_file(str(tmp_path / "key.json"))
    assert signed_urls.url_ttl_for(creds, week) == week, "a key file signs for up to 7 days"
