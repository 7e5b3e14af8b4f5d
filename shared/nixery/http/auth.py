"""Who may pull from a private registry: HTTP Basic, or bearer tokens as Docker asks for them.

Public is the default. With NIXERY_AUTH set, every request under ``/v2/`` needs credentials:

- ``basic``: the challenge is ``WWW-Authenticate: Basic``; clients send the user's name and
  password with every request (skopeo ``--creds``, ``podman login``, ``ctr --user``).
- ``token``: the challenge is Docker's token protocol, ``WWW-Authenticate: Bearer
  realm=".../auth/token",service=...,scope=...``; clients trade the name and password for
  a short-lived token at that endpoint, then send the token (as ``docker login`` expects).

Passwords are stored only as PBKDF2-SHA256 hashes (``nixery hash-password`` makes them),
compared in constant time; an unknown user costs the same work as a wrong password, so
timing does not tell them apart. Checking a hash costs a few hundred milliseconds by design,
and clients send Basic credentials with every request, so a success is remembered for a few
minutes under a hash of the credentials. Tokens are signed with NIXERY_AUTH_SECRET (one key
for every instance) and expire. A refusal is logged with the address and the claimed user
name, never the password or the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
import time
from typing import Any

from cachetools import TTLCache
from itsdangerous import BadSignature, URLSafeTimedSerializer

from nixery.config import PASSWORD_HASH, PASSWORD_HASH_RE, AuthSettings

log = logging.getLogger(__name__)

ITERATIONS = 600_000  # OWASP's advice for PBKDF2-HMAC-SHA256
TOKEN_TTL = 300  # seconds; clients ask again when one expires
REMEMBER = 300.0  # seconds a checked password is not checked again


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{PASSWORD_HASH}${iterations}${_b64(salt)}${_b64(digest)}"


class Auth:
    def __init__(self, settings: AuthSettings) -> None:
        self.scheme = settings.scheme
        self._users = dict(settings.users)
        self._tokens = URLSafeTimedSerializer(settings.secret, salt="nixery-token")
        # What an unknown user is checked against: the same work as a real one.
        self._nobody = hash_password(os.urandom(16).hex())
        self._remembered: TTLCache[str, str] = TTLCache(4096, REMEMBER)
        self._lock = threading.Lock()

    def check_password(self, user: str, password: str) -> bool:
        key = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        with self._lock:
            if self._remembered.get(key) == user:
                return True
        stored = self._users.get(user)
        match = PASSWORD_HASH_RE.fullmatch(stored or self._nobody)
        assert match is not None  # checked when the settings were read
        iterations, salt, expected = match.groups()
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        good = hmac.compare_digest(_b64(actual), expected) and stored is not None
        if good:
            with self._lock:
                self._remembered[key] = user
        return good

    def issue(self, user: str) -> dict[str, Any]:
        """The token endpoint's answer for a user who gave a good password."""
        token = self._tokens.dumps({"sub": user})
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {"token": token, "access_token": token, "expires_in": TOKEN_TTL,
                "issued_at": issued}  # fmt: skip

    def user_of_token(self, token: str) -> str | None:
        try:
            claims = self._tokens.loads(token, max_age=TOKEN_TTL)
        except BadSignature:  # expired ones too
            return None
        user = claims.get("sub") if isinstance(claims, dict) else None
        return user if isinstance(user, str) and user in self._users else None

    def challenge(self, root_url: str, host: str, scope: str | None) -> str:
        """The WWW-Authenticate header that tells a client how to authenticate."""
        if self.scheme == "basic":
            return 'Basic realm="nixery"'
        params = [f'realm="{root_url}auth/token"', f'service="{host}"']
        if scope:
            params.append(f'scope="{scope}"')
        return "Bearer " + ",".join(params)
