"""Signing through Cloud KMS: the builder's signatures (``pipeline.signing``) made by an asymmetric
key that never leaves KMS (NIXERY_SIGNING_KMS_KEY, a key version of purpose ASYMMETRIC_SIGN,
such as EC_SIGN_P256_SHA256, whose public key `gcloud kms keys versions get-public-key` gives
for `cosign verify --key`).

KMS signs a SHA-256 digest with asymmetricSign; for an EC key the signature is DER, as cosign
expects. One call per manifest (two per image); a failure fails the attempt, which Cloud
Tasks retries, so nothing is published unsigned.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
import zlib
from collections.abc import Callable

KMS_ENDPOINT = "https://cloudkms.googleapis.com"
KEY_VERSION = (
    r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+/cryptoKeyVersions/[0-9]+"
)


class KmsIntegrityError(Exception):
    """KMS's answer does not match what was sent or received: retried, never published."""


class KmsSigner:
    def __init__(
        self,
        key_version: str,
        token: Callable[[], str],
        endpoint: str = KMS_ENDPOINT,
        timeout: float = 10.0,
    ) -> None:
        self._key = key_version
        self._token = token
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout

    def sign(self, payload: bytes) -> bytes:
        """Signs the payload's SHA-256 digest, with the checksums KMS offers both ways, as
        Google asks of callers of asymmetricSign."""
        digest = hashlib.sha256(payload).digest()
        body = {
            "digest": {"sha256": base64.b64encode(digest).decode()},
            "digestCrc32c": str(zlib.crc32(digest)),
        }
        request = urllib.request.Request(
            f"{self._endpoint}/v1/{self._key}:asymmetricSign",
            data=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self._token()}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            answer = json.load(response)
        signature = base64.b64decode(answer["signature"])
        if not answer.get("verifiedDigestCrc32c") or answer.get("name") != self._key:
            raise KmsIntegrityError("KMS did not confirm the digest it signed, or the key")
        if int(answer.get("signatureCrc32c", -1)) != zlib.crc32(signature):
            raise KmsIntegrityError("the signature KMS returned was damaged on the way")
        return signature
