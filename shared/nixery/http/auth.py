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

- clients send Basic credentials with every request: a success is remembered under a keyed
  hash of the credentials (a key of this process's, so that the cache is no list of fast
  hashes to guess passwords against) until it goes unused for a few minutes, and is not
  checked again; one request at a time checks a given credential, so that a client's
  parallel requests cost one check;
- failed logins (a wrong password) are counted per address (an IPv6 address's /64) and per
  claimed user name (NIXERY_AUTH_FAILURES, a sliding window): past the count, a login is
  refused 429 before its password is checked. A user name's count does not apply where that
  user logged in from before (a day's memory of user and address pairs, keyed-hashed too), so
  that a stranger guessing a user's password from elsewhere does not lock the user out;
- at most NIXERY_AUTH_CHECKS passwords are checked at once; another is refused 503 at once,
  rather than queued on a thread: the CPU left serves the clients that have logged in. It is
  counted as failed against its address only (not its user name, which a flood could then
  lock), so that a flood soon meets the 429s, which check no password.
- the 429s are logged as one line per address every LOG_REFUSALS seconds, with their count
  (and not in the access log; ``logs.Tally``): a flood's thousands a second, a line each,
  would cost the server more than refusing them. The line that says an address or user is
  throttled names which.

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

from nixery.caches import BoundedCache, Clock, KeyedLocks
from nixery.config import PASSWORD_HASH, PASSWORD_HASH_RE, AuthSettings
from nixery.errors import LoginsBusy, TooManyLogins
from nixery.limits import SlidingWindows, client_key
from nixery.logs import Tally

log = logging.getLogger(__name__)

ITERATIONS = 600_000  # OWASP's advice for PBKDF2-HMAC-SHA256
TOKEN_TTL = 300  # seconds; clients ask again when one expires
TOKEN_SALT = "nixery-token"  # what a token is signed for: nothing else the secret signs
REMEMBER = 300.0  # seconds a checked password is not checked again, from its last use
CHECKED = 4096  # logins remembered at once
KNOWN = 86400.0  # seconds a user stays known at an address, from its last login there
KNOWN_PAIRS = 20_000  # user and address pairs known at once
# Addresses and user names whose failed logins are counted at once; beyond, those that
# failed least recently are forgotten (docs/security.md says what they cost).
FAILING = 20_000
LOG_REFUSALS = 10.0  # seconds between the lines that count the logins refused unchecked


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{PASSWORD_HASH}${iterations}${_b64(salt)}${_b64(digest)}"


class Auth:
    def __init__(self, settings: AuthSettings, clock: Clock = time.monotonic) -> None:
        self.scheme = settings.scheme
        self._users = dict(settings.users)
        self._tokens = URLSafeTimedSerializer(settings.secret, salt=TOKEN_SALT)
        # What an unknown user is checked against: the same work as a real one.
        self._nobody = hash_password(os.urandom(16).hex())
        self._key = os.urandom(32)  # the remembered logins' keyed hash
        self._checked: BoundedCache[str] = BoundedCache(CHECKED, REMEMBER, clock)
        self._known: BoundedCache[str] = BoundedCache(KNOWN_PAIRS, KNOWN, clock)
        self._one_check = KeyedLocks()
        self._failures = SlidingWindows(settings.failures, FAILING, clock)
        self._checking = threading.BoundedSemaphore(settings.checks)
        self._clock = clock
        self._refused = Tally(
            log, "%s: refused %d logins unchecked in the last %.0f s: too many failed logins",
            "throttled", LOG_REFUSALS, clock,
        )  # fmt: skip

    def check_password(self, user: str, password: str, client: str) -> bool:
        """Whether ``password`` is ``user``'s, for a request from the address ``client``.
        Raises ``TooManyLogins`` while the address or the user name has failed too many logins,
        ``LoginsBusy`` while as many passwords as allowed are being checked."""
        # A user name holds no colon (Basic splits there), so each pair is unambiguous.
        address = client_key(client)
        login, pair = self._hash(f"{user}:{password}"), self._hash(f"{user}:{address}")
        if self._remembered(login, pair, user):
            return True
        with self._one_check.hold(login):
            if self._remembered(login, pair, user):  # checked while this request waited
                return True
            keys: tuple[str, ...] = (f"address {address}",)
            if self._known.get(pair) != user:
                keys += (f"user {user[:64]}",)
            if full := self._failures.admit(keys):
                wait, which = full  # the address's count, or the user name's
                self._refused.count(keys[0] if which == keys[0] else f"{keys[0]}, {which}")
                raise TooManyLogins("too many failed logins: try again later", wait)
            self._warn_when_full(keys)
            if not self._checking.acquire(blocking=False):
                self._failures.take_back(keys[1:])
                raise LoginsBusy("too many passwords are being checked at once")
            try:
                good = self._verify(user, password)
            finally:
                self._checking.release()
            if good:
                self._failures.take_back(keys)
                self._checked.keep(login, user)
                self._known.keep(pair, user)
            return good

    def _hash(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), "sha256").hexdigest()

    def _remembered(self, login: str, pair: str, user: str) -> bool:
        """Whether the login was checked before; if so it is remembered for longer, and so is
        the user at this address."""
        if self._checked.get(login) != user:
            return False
        self._checked.keep(login, user)
        self._known.keep(pair, user)
        return True

    def _warn_when_full(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            if (count := self._failures.count(key)) == self._failures.rate.count:
                log.warning("%s: %d failed logins; the next are refused unchecked for up to %g s",
                            key, count, self._failures.rate.window,
                            extra={"throttled": key})  # fmt: skip

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
