"""Signing blob URLs: with a service account key where one exists, else through IAM.

Cloud Run and Cloud Functions have no private key: the runtime service account signs through
the IAM Credentials API's signBlob (it needs the Service Account Token Creator role on
itself). That is a network call, so a signed URL is reused while most of its life remains,
and a call refused for a while (429, 5xx, no connection) is retried with exponential backoff
within a bounded time.

A signature made through IAM is one of Google-managed keys, which Google rotates: "each key
can be used for signing for a maximum of two weeks" (IAM documentation, "Service account
keys", Google-managed key pairs), and a URL stops working once its key is retired. How long
a key stays valid for verification after it last signed is not documented, so such URLs
are kept short: at most IAM_MAX_TTL, far inside any rotation, whatever NIXERY_URL_TTL says
(a V4 signature's own limit, 7 days, still holds for key files). Clients fetch a blob at
once on the registry's redirect and ask the registry again for the next pull, so a shorter
life costs only a signature now and then.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from google.auth import credentials as ga_credentials

IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
IAM_MAX_TTL = 12 * 3600.0  # seconds; see above
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

log = logging.getLogger(__name__)


def _retryable(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code in RETRY_STATUSES
    return isinstance(error, (urllib.error.URLError, TimeoutError, ConnectionError))


def _retry_after(error: Exception) -> float:
    """The delay a 429 or 503 asks for in seconds, or 0 when it names none."""
    if isinstance(error, urllib.error.HTTPError) and error.headers is not None:
        try:
            return max(0.0, float(error.headers.get("Retry-After", 0)))
        except ValueError:
            pass  # an HTTP date: not worth honouring here
    return 0.0


class IamSigner(ga_credentials.Signing):
    """Signs bytes with IAM signBlob, as the given service account."""

    def __init__(
        self,
        email: str,
        token: Callable[[], str],
        endpoint: str = IAM_ENDPOINT,
        timeout: float = 10.0,
        *,
        attempts: int = 5,
        deadline: float = 20.0,
        backoff: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._email = email
        self._token = token
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout  # of one call
        self._attempts = attempts  # calls at most, for one signature
        self._deadline = deadline  # seconds at most, calls and waits, for one signature
        self._backoff = backoff  # the first wait; each next one doubles, with jitter
        self._clock = clock
        self._sleep = sleep

    def sign_bytes(self, message: bytes) -> bytes:
        """Signs through signBlob, retrying refusals that pass (429, 5xx, a lost
        connection; signing is idempotent) with exponential backoff, until ``attempts``
        calls or ``deadline`` seconds have gone; then the last error is raised."""
        end = self._clock() + self._deadline
        for attempt in range(self._attempts):
            left = end - self._clock()
            try:
                return self._call(message, timeout=max(0.001, min(self._timeout, left)))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if not _retryable(error) or attempt + 1 == self._attempts:
                    raise
                wait = self._backoff * 2**attempt * random.uniform(0.5, 1.0)
                wait = max(wait, _retry_after(error))
                if self._clock() + wait >= end:
                    raise  # the next call could not even start in time
                log.warning("IAM signBlob failed (%s); retrying in %.2fs", error, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, message: bytes, timeout: float) -> bytes:
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
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return base64.b64decode(json.load(response)["signedBlob"])

    @property
    def signer_email(self) -> str:
        return self._email

    @property
    def signer(self) -> Any:
        return self


def token_source(creds: ga_credentials.Credentials) -> Callable[[], str]:
    """A function giving a valid access token of ``creds``, refreshed when it expires."""
    import google.auth.transport.requests

    lock = threading.Lock()

    def token() -> str:
        with lock:
            if not creds.valid:
                creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
            return str(creds.token)

    return token


def runtime_token() -> Callable[[], str]:
    """Access tokens of the credentials this process runs with (Application Default). A key
    file makes its own (self-signed JWTs, which Google's APIs accept), sparing a call to the
    token endpoint; on Cloud Run they come from the metadata server."""
    import google.auth
    from google.oauth2 import service_account

    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    if isinstance(creds, service_account.Credentials):
        creds = creds.with_always_use_jwt_access(True)  # type: ignore[no-untyped-call]
    return token_source(creds)


def runtime_signer(endpoint: str = IAM_ENDPOINT) -> ga_credentials.Signing:
    """The signer for the credentials this process runs with (Application Default)."""
    import google.auth

    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    if isinstance(creds, ga_credentials.Signing):
        return creds  # a key file (GOOGLE_APPLICATION_CREDENTIALS): sign locally
    token = token_source(creds)
    token()  # metadata-server credentials learn their email on refresh
    email = getattr(creds, "service_account_email", None)
    if not email or email == "default":
        raise RuntimeError("cannot tell the runtime service account to sign blob URLs as")
    return IamSigner(email, token, endpoint)


def url_ttl_for(signer: object, ttl: float) -> float:
    """The life of the URLs ``signer`` makes: ``ttl``, but at most IAM_MAX_TTL through IAM.

    Clamped with a warning rather than refused by the settings, which cannot tell: only
    runtime_signer, from the Application Default Credentials, learns whether there is a key
    file (which may sign for up to 7 days) or signing goes through IAM. A shorter life is
    safe: a client fetches a URL on the redirect that names it.
    """
    if isinstance(signer, IamSigner) and ttl > IAM_MAX_TTL:
        log.warning(
            "NIXERY_URL_TTL=%g is longer than a URL signed through IAM is sure to stay valid; "
            "using %g seconds",
            ttl,
            IAM_MAX_TTL,
        )
        return IAM_MAX_TTL
    return ttl


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
