"""Signing blob URLs: with a service account key where one exists, else through IAM.

Cloud Run and Cloud Functions have no private key: the runtime service account signs through
the IAM Credentials API's signBlob (it needs the Service Account Token Creator role on
itself). That is a network call, so a signed URL is reused while most of its life remains.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from google.auth import credentials as ga_credentials

IAM_ENDPOINT = "https://iamcredentials.googleapis.com"


class IamSigner(ga_credentials.Signing):
    """Signs bytes with IAM signBlob, as the given service account."""

    def __init__(
        self,
        email: str,
        token: Callable[[], str],
        endpoint: str = IAM_ENDPOINT,
        timeout: float = 10.0,
    ) -> None:
        self._email = email
        self._token = token
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout

    def sign_bytes(self, message: bytes) -> bytes:
        url = f"{self._endpoint}/v1/projects/-/serviceAccounts/{self._email}:signBlob"
        request = urllib.request.Request(
            url,
            data=json.dumps({"payload": base64.b64encode(message).decode()}).encode(),
            headers={
                "Authorization": f"Bearer {self._token()}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            return base64.b64decode(json.load(response)["signedBlob"])

    @property
    def signer_email(self) -> str:
        return self._email

    @property
    def signer(self) -> Any:
        return self


def runtime_signer(endpoint: str = IAM_ENDPOINT) -> ga_credentials.Signing:
    """The signer for the credentials this process runs with (Application Default)."""
    import google.auth
    import google.auth.transport.requests

    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    if isinstance(creds, ga_credentials.Signing):
        return creds  # a key file (GOOGLE_APPLICATION_CREDENTIALS): sign locally
    lock = threading.Lock()

    def token() -> str:
        with lock:
            if not creds.valid:
                creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
            return str(creds.token)

    token()  # metadata-server credentials learn their email on refresh
    email = getattr(creds, "service_account_email", None)
    if not email or email == "default":
        raise RuntimeError("cannot tell the runtime service account to sign blob URLs as")
    return IamSigner(email, token, endpoint)


class SignedUrls:
    """V4 signed GET URLs for objects, each reused until half its lifetime has passed."""

    def __init__(
        self,
        sign: Callable[[str, timedelta], str],
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sign = sign
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(name)
        if cached and cached[0] - now > self._ttl / 2:
            return cached[1]
        url = self._sign(name, timedelta(seconds=self._ttl))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[name] = (now + self._ttl, url)
        return url
