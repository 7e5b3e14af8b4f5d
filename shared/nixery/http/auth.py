"""Who may pull from a private registry: HTTP Basic, or bearer tokens as Docker asks for them.

Public is the default. With NIXERY_AUTH set, every request under ``/v2/`` needs credentials:

- ``basic``: the challenge is ``WWW-Authenticate: Basic``; clients send the user's name and
  password with every request (skopeo ``--creds``, ``podman login``, ``ctr --user``).
- ``token``: the challenge is Docker's token protocol, ``WWW-Authenticate: Bearer
  realm=".../auth/token",service=...,scope=...``; clients trade the name and password for
  a short-lived token at that endpoint, then send the token (as ``docker login`` expects).

Passwords are stored only as PBKDF2-SHA256 hashes (``nixery hash-password`` makes them),
compared in constant time; an unknown user costs the same work as a wrong password, so
timing does not tell them apart. Checking a hash costs a few hundred milliseconds of CPU by
design, which a stranger could spend for us at will, so:

- clients send Basic credentials with every request: a success is remembered for a few
  minutes under a keyed hash of the credentials (a key of this process's, so that the cache
  is no list of fast hashes to guess passwords against), and is not checked again;
- failed logins (a wrong password, or one refused while the checks are busy) are counted per
  address and per claimed user name (NIXERY_AUTH_FAILURES): past the count, a login is
  refused 429 before its password is checked;
- at most NIXERY_AUTH_CHECKS passwords are checked at once; another is refused 503 at once,
  rather than queued on a thread: the CPU left serves the clients that have logged in. It is
  counted as failed, so that a flood soon meets the 429s, which check no password, and
  leaves the checks to logins from elsewhere.

Tokens are checked with one HMAC, not a hash of the password. They are signed with
NIXERY_AUTH_SECRET (one key for every instance) and expire; a token that does not verify, or
whose claims are not what this module signs, is refused like a wrong password. A refusal is
logged with the address and the claimed user name, never the password or the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
import time
import urllib.parse
from typing import Any

from itsdangerous import BadData, URLSafeTimedSerializer

from nixery.caches import BoundedCache
from nixery.config import PASSWORD_HASH, PASSWORD_HASH_RE, AuthSettings, Rate
from nixery.errors import LoginsBusy, TooManyLogins

log = logging.getLogger(__name__)

ITERATIONS = 600_000  # OWASP's advice for PBKDF2-HMAC-SHA256
TOKEN_TTL = 300  # seconds; clients ask again when one expires
TOKEN_SALT = "nixery-token"  # what a token is signed for: nothing else the secret signs
REMEMBER = 300.0  # seconds a checked password is not checked again
CHECKED = 4096  # logins remembered at once
# Addresses and user names whose failed logins are counted at once (about 10 MB); beyond,
# those that failed least recently are forgotten.
FAILING = 20_000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{PASSWORD_HASH}${iterations}${_b64(salt)}${_b64(digest)}"


class Attempts:
    """Logins that needed a password checked and did not prove it right (wrong, or refused
    while the checks were busy), per key (an address, a user name), in a window of
    ``rate.window`` seconds from the key's first one. A key with ``rate.count`` of them is
    refused until its window ends; so is every key of an attempt when one of its keys is."""

    def __init__(self, rate: Rate) -> None:
        self._rate = rate
        self._counts: BoundedCache[tuple[float, int]] = BoundedCache(FAILING, rate.window)
        self._lock = threading.Lock()

    def admit(self, keys: tuple[str, ...]) -> float:
        """Counts an attempt against each of ``keys``, or refuses it: 0, or the seconds until
        it would be admitted."""
        with self._lock:
            now = time.monotonic()
            counts = [self._current(key, now) for key in keys]
            wait = max((s + self._rate.window - now for s, c in counts if c >= self._rate.count),
                       default=0.0)  # fmt: skip
            if wait > 0:
                return wait
            for key, (started, count) in zip(keys, counts, strict=True):
                self._counts.keep(key, (started, count + 1))
                if count + 1 == self._rate.count:
                    log.warning("%s: %d failed logins; the next are refused unchecked for up "
                                "to %g s", key, count + 1, self._rate.window,
                                extra={"throttled": key})  # fmt: skip
            return 0.0

    def refund(self, keys: tuple[str, ...]) -> None:
        """Takes back an attempt that proved its password right."""
        with self._lock:
            now = time.monotonic()
            for key in keys:
                started, count = self._current(key, now)
                if count:
                    self._counts.keep(key, (started, count - 1))

    def _current(self, key: str, now: float) -> tuple[float, int]:
        started, count = self._counts.get(key) or (now, 0)
        return (started, count) if now < started + self._rate.window else (now, 0)


class Auth:
    def __init__(self, settings: AuthSettings) -> None:
        self.scheme = settings.scheme
        self._users = dict(settings.users)
        self._tokens = URLSafeTimedSerializer(settings.secret, salt=TOKEN_SALT)
        # What an unknown user is checked against: the same work as a real one.
        self._nobody = hash_password(os.urandom(16).hex())
        self._key = os.urandom(32)  # the remembered logins' keyed hash
        self._checked: BoundedCache[str] = BoundedCache(CHECKED, REMEMBER)
        self._attempts = Attempts(settings.failures)
        self._checking = threading.BoundedSemaphore(settings.checks)

    def check_password(self, user: str, password: str, client: str) -> bool:
        """Whether ``password`` is ``user``'s, for a request from the address ``client``.
        Raises ``TooManyLogins`` while the address or the user name has failed too many logins,
        ``LoginsBusy`` while as many passwords as allowed are being checked."""
        # A user name holds no colon (Basic splits there), so the pair is unambiguous.
        key = hmac.new(self._key, f"{user}:{password}".encode(), "sha256").hexdigest()
        if self._checked.get(key) == user:
            return True
        keys = (f"address {client}", f"user {user[:64]}")
        if wait := self._attempts.admit(keys):
            raise TooManyLogins("too many failed logins: try again later", wait)
        if not self._checking.acquire(blocking=False):
            raise LoginsBusy("too many passwords are being checked at once")
        try:
            good = self._verify(user, password)
        finally:
            self._checking.release()
        if good:
            self._attempts.refund(keys)
            self._checked.keep(key, user)
        return good

    def _verify(self, user: str, password: str) -> bool:
        stored = self._users.get(user)
        match = PASSWORD_HASH_RE.fullmatch(stored or self._nobody)
        assert match is not None  # checked when the settings were read
        iterations, salt, expected = match.groups()
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(_b64(actual), expected) and stored is not None

    def issue(self, user: str) -> dict[str, Any]:
        """The token endpoint's answer for a user who gave a good password."""
        token = self._tokens.dumps({"sub": user})
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {"token": token, "access_token": token, "expires_in": TOKEN_TTL,
                "issued_at": issued}  # fmt: skip

    def user_of_token(self, token: str) -> str | None:
        try:
            claims = self._tokens.loads(token, max_age=TOKEN_TTL)
        except BadData:  # a bad or expired signature, or a signed payload that is no JSON
            return None
        user = claims.get("sub") if isinstance(claims, dict) else None
        return user if isinstance(user, str) and user in self._users else None

    def challenge(self, base_url: str, scope: str | None) -> str:
        """The WWW-Authenticate header that tells a client how to authenticate, for the
        registry at ``base_url`` (as clients reach it, without a trailing slash)."""
        if self.scheme == "basic":
            return 'Basic realm="nixery"'
        host = urllib.parse.urlsplit(base_url).netloc
        params = [f'realm="{base_url}/auth/token"', f'service="{host}"']
        if scope:
            params.append(f'scope="{scope}"')
        return "Bearer " + ",".join(params)
