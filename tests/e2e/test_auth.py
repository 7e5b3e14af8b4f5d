"""A private registry: HTTP Basic and Docker's bearer tokens, with real clients (skopeo,
podman, containerd's ctr), and the errors and logs a refused client leaves."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from nixery import config
from nixery.config import AuthSettings, Env, Rate, auth_settings
from nixery.errors import ConfigError, TooManyLogins
from nixery.http.auth import (
    KNOWN,
    LOG_REFUSALS,
    REMEMBER,
    TOKEN_SALT,
    TOKEN_TTL,
    Auth,
    hash_password,
)
from tests.helpers.clients import Containerd
from tests.helpers.fakes import FakeClock
from tests.helpers.registries import NIXERY, OCI, Registry

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
SECRET = "s" * 40


@pytest.fixture(scope="module")
def hashed() -> str:
    """A hash made by the command an operator runs, from the password on its stdin."""
    made = subprocess.run(
        [str(NIXERY), "hash-password"], input=PASSWORD + "\n", capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return made.stdout.strip()


@pytest.fixture(params=["basic", "token"])
def private(request, make_registry, hashed) -> Registry:
    return make_registry(
        NIXERY_AUTH=request.param, NIXERY_AUTH_USERS=f"alice:{hashed}",
        NIXERY_AUTH_SECRET=SECRET,
    )  # fmt: skip


def test_the_hash_is_salted_pbkdf2_and_checks_only_its_password(hashed) -> None:
    assert hashed.startswith("pbkdf2-sha256$600000$")
    assert hash_password(PASSWORD) != hashed, "salted"
    auth = Auth(AuthSettings("basic", {"alice": hashed}, SECRET.encode()))
    assert auth.check_password("alice", PASSWORD, "192.0.2.1")
    assert not auth.check_password("alice", PASSWORD + "!", "192.0.2.1")
    assert not auth.check_password("bob", PASSWORD, "192.0.2.1"), "an unknown user"


def test_a_good_password_takes_its_attempt_back(hashed) -> None:
    """Only failed logins count: a user who mistypes once and then logs in has used none."""
    auth = Auth(AuthSettings("basic", {"alice": hashed}, SECRET.encode(), Rate(2, 3600.0)))
    assert not auth.check_password("alice", "typo", "192.0.2.1")
    assert auth.check_password("alice", PASSWORD, "192.0.2.1")
    assert not auth.check_password("alice", "another typo", "192.0.2.1")
    with pytest.raises(TooManyLogins) as refused:
        auth.check_password("alice", "a third", "192.0.2.1")
    assert 3590 < refused.value.retry_after <= 3600
    assert auth.check_password("alice", PASSWORD, "192.0.2.1"), "remembered: not checked"


def test_a_login_is_remembered_while_it_is_used(hashed) -> None:
    """A client that keeps sending its password is not checked again however long it goes on,
    and so is not refused while its user name is throttled (one minute's gap does not make
    it a stranger); one that stopped for longer is checked again."""
    clock = FakeClock()
    auth = Auth(AuthSettings("basic", {"alice": hashed}, SECRET.encode(), Rate(1, 3600.0)),
                clock)  # fmt: skip
    assert auth.check_password("alice", PASSWORD, "192.0.2.1")
    assert not auth.check_password("alice", "a guess", "198.51.100.1")  # alice is throttled
    for _ in range(10):
        clock.advance(REMEMBER * 0.6)
        assert auth.check_password("alice", PASSWORD, "192.0.2.77"), "remembered: not checked"
    clock.advance(REMEMBER + 1)
    with pytest.raises(TooManyLogins):
        auth.check_password("alice", PASSWORD, "192.0.2.78"), "forgotten: checked, refused"


def test_a_user_is_known_where_it_logged_in_and_ipv6_counts_by_64(hashed) -> None:
    """Where a user logged in before, only the address's count applies, not the user name's
    (which anyone may fill); an IPv6 client counts by its /64, from which it may send from
    any address."""
    clock = FakeClock()
    auth = Auth(AuthSettings("basic", {"alice": hashed}, SECRET.encode(), Rate(2, 3600.0)),
                clock)  # fmt: skip
    assert auth.check_password("alice", PASSWORD, "2001:db8:1:2::5")
    clock.advance(KNOWN / 2)  # long forgotten as a remembered login
    for i in range(2):
        assert not auth.check_password("alice", f"guess {i}", f"198.51.100.{i}")
    assert auth.check_password("alice", PASSWORD, "2001:db8:1:2:ffff::9"), "known there"
    clock.advance(REMEMBER + 1)
    with pytest.raises(TooManyLogins):
        auth.check_password("alice", PASSWORD, "2001:db8:1:3::5"), "another /64: unknown"
    assert not auth.check_password("bob", "x", "2001:db8:7::1")
    assert not auth.check_password("carol", "x", "2001:db8:7::2")
    with pytest.raises(TooManyLogins):
        auth.check_password("dave", "x", "2001:db8:7::3:4"), "one /64, one count"


def test_tokens_are_signed_and_expire(hashed, monkeypatch) -> None:
    auth = Auth(AuthSettings("token", {"alice": hashed}, SECRET.encode()))
    token = auth.issue("alice")["token"]
    assert auth.user_of_token(token) == "alice"
    other = Auth(AuthSettings("token", {"alice": hashed}, b"x" * 40))
    assert other.user_of_token(token) is None, "signed with another secret"
    assert auth.user_of_token(token[:-2] + "xx") is None
    later = time.time() + TOKEN_TTL + 5
    monkeypatch.setattr(time, "time", lambda: later)
    assert auth.user_of_token(token) is None, "expired"


def test_auth_settings_are_checked_at_start(hashed) -> None:
    assert auth_settings(Env({})) is None, "public by default"
    bad = [
        {"NIXERY_AUTH": "digest", "NIXERY_AUTH_USERS": f"alice:{hashed}"},
        {"NIXERY_AUTH": "basic"},
        {"NIXERY_AUTH": "basic", "NIXERY_AUTH_USERS": "alice:plaintext"},
        {"NIXERY_AUTH": "basic", "NIXERY_AUTH_USERS": f"alice:{hashed}",
         "NIXERY_AUTH_SECRET": "short"},
    ]  # fmt: skip
    for env in bad:
        with pytest.raises(ConfigError):
            auth_settings(Env(env))
    token = {"NIXERY_AUTH": "token", "NIXERY_AUTH_USERS": f"alice:{hashed}"}
    with pytest.raises(ConfigError, match="NIXERY_AUTH_SECRET"):
        auth_settings(Env(token), need_secret=True)


def test_checks_at_once_default_to_half_the_cpus_a_container_may_use(
    hashed, tmp_path, monkeypatch
) -> None:
    """A container's CPU limit (cgroup v2's cpu.max) is no fewer CPUs to sched_getaffinity:
    checks sized by that would take every CPU the container may use."""
    mine = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert config.cpus(tmp_path / "none") == mine, "no cgroup v2"
    cpu_max.write_text("max 100000\n")
    assert config.cpus(cpu_max) == mine, "no limit"
    cpu_max.write_text("50000 100000\n")
    assert config.cpus(cpu_max) == 1, "half a CPU"
    cpu_max.write_text("300000 200000\n")
    assert config.cpus(cpu_max) == min(mine, 2)
    monkeypatch.setattr(config, "cpus", lambda: 8)
    env = Env({"NIXERY_AUTH": "basic", "NIXERY_AUTH_USERS": f"alice:{hashed}"})
    read = auth_settings(env)
    assert read is not None and read.checks == 4
    assert AuthSettings("basic", {}, b"").checks == 4, "the settings' default is the same"


def test_strangers_get_a_401_challenge_and_leave_no_secret_in_the_log(private) -> None:
    scheme = private.env["NIXERY_AUTH"]
    digest = f"sha256:{'0' * 64}"
    for path in ("/v2/", "/v2/hello/manifests/latest", f"/v2/hello/blobs/{digest}",
                 f"/v2/hello/referrers/{digest}"):  # fmt: skip
        refused = private.get(path, auth=("alice", "wrong password"))
        assert refused.status_code == 401, refused.text
        assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
        challenge = refused.headers["WWW-Authenticate"]
        if scheme == "basic":
            assert challenge == 'Basic realm="nixery"'
        else:
            assert challenge.startswith(f'Bearer realm="{private.url}/auth/token",service=')
    for path in ("/v2/hello/manifests/latest", f"/v2/hello/referrers/{digest}"):
        challenge = private.get(path).headers["WWW-Authenticate"]
        assert 'scope="repository:hello:pull"' in challenge or scheme == "basic"
    # A name that is no repository's gets no scope: its quote would end the parameter.
    challenge = private.get('/v2/a",realm="http://evil/manifests/latest').headers
    assert challenge["WWW-Authenticate"].count("realm=") == 1
    bad_token = private.get("/v2/", headers={"Authorization": "Bearer forged.token.here"})
    assert bad_token.status_code == 401
    assert "wrong password" not in private.log() and "forged.token" not in private.log()
    assert "refused" in private.log() and "alice" in private.log()
    assert private.builds_started() == 0
    assert private.get("/").status_code == 200, "the web page stays public"


def test_the_token_endpoint_trades_a_password_for_a_token(private) -> None:
    url = "/auth/token?service=x&scope=repository:hello:pull"
    assert private.get(url).status_code == 401
    assert private.get(url, auth=("alice", "nope")).status_code == 401
    answer = private.get(url, auth=("alice", PASSWORD))
    assert answer.status_code == 200
    token = answer.json()["token"]
    assert answer.json()["access_token"] == token and answer.json()["expires_in"] == TOKEN_TTL
    pulled = private.get(
        "/v2/hello/manifests/latest",
        headers={"Authorization": f"Bearer {token}", "Accept": OCI},
    )
    assert pulled.status_code == 200, pulled.text
    # Held in memory now, but for those who prove who they are only (no answer before Flask).
    again = private.get("/v2/hello/manifests/latest", method="HEAD", headers={"Accept": OCI})
    assert again.status_code == 401
    assert private.get("/v2/hello/manifests/latest", headers={"Accept": OCI}).status_code == 401


def test_skopeo_with_credentials_and_without(private, clients, tmp_path) -> None:
    clients.trust(private.host)
    image = f"docker://{private.host}/hello"
    copied = clients.skopeo("copy", "--src-tls-verify=false", "--src-creds",
                            f"alice:{PASSWORD}", image, f"oci:{tmp_path}/img:latest")  # fmt: skip
    assert copied.returncode == 0, copied.stderr + private.log()
    refused = clients.skopeo("inspect", "--tls-verify=false", image)
    assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower()
    wrong = clients.skopeo("inspect", "--tls-verify=false", "--creds", "alice:nope", image)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower()


def test_podman_login_then_pull(private, clients, tmp_path) -> None:
    clients.trust(private.host)
    authfile = str(tmp_path / "auth.json")
    login = clients.podman("login", "--authfile", authfile, "--tls-verify=false",
                           "-u", "alice", "-p", PASSWORD, private.host)  # fmt: skip
    assert login.returncode == 0, login.stderr
    pulled = clients.podman("pull", "--authfile", authfile, f"{private.host}/hello")
    assert pulled.returncode == 0, pulled.stderr
    bad = clients.podman("login", "--authfile", authfile, "--tls-verify=false",
                         "-u", "alice", "-p", "nope", private.host)  # fmt: skip
    assert bad.returncode != 0


def test_containerd_pulls_with_user(private, tmp_path) -> None:
    containerd = Containerd(tmp_path / "containerd")
    try:
        ref = f"{private.host}/hello:latest"
        pulled = containerd.ctr("image", "pull", "--plain-http", "--user", f"alice:{PASSWORD}", ref)
        assert pulled.returncode == 0, pulled.stderr
        refused = containerd.ctr("image", "pull", "--plain-http", f"{private.host}/jq:latest")
        assert refused.returncode != 0
    finally:
        containerd.stop()


def test_the_registry_function_is_private_too(emulators, hashed, tmp_path) -> None:
    """The function's quick ping (answered before the Google Cloud clients load) is skipped
    when the registry is private; a token signed by one instance is good on any other."""
    from tests.helpers.emulators import GcpRegistry

    env = {"NIXERY_AUTH": "token", "NIXERY_AUTH_USERS": f"alice:{hashed}",
           "NIXERY_AUTH_SECRET": SECRET}  # fmt: skip
    first = GcpRegistry(tmp_path / "a", emulators, **env).start()
    second = GcpRegistry(tmp_path / "b", emulators, **env).start()
    try:
        assert first.get("/v2/").status_code == 401
        token = first.get("/auth/token", auth=("alice", PASSWORD)).json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": OCI}
        assert second.get("/v2/", headers=headers).status_code == 200
        assert second.get("/v2/hello/manifests/latest", headers=headers).status_code == 200
    finally:
        first.stop()
        second.stop()


def test_the_token_realm_is_the_public_url_when_one_is_set(make_registry, hashed) -> None:
    """Behind a TLS proxy the request's own URL is http://: a client sent there would send
    its password in clear text, or fail to log in."""
    env = {"NIXERY_AUTH": "token", "NIXERY_AUTH_USERS": f"alice:{hashed}",
           "NIXERY_AUTH_SECRET": SECRET}  # fmt: skip
    public = make_registry(NIXERY_PUBLIC_URL="https://nixery.example.org", **env)
    challenge = public.get("/v2/hello/manifests/latest").headers["WWW-Authenticate"]
    assert challenge.startswith(
        'Bearer realm="https://nixery.example.org/auth/token",service="nixery.example.org"'
    ), challenge
    proxied = make_registry(NIXERY_TRUSTED_PROXIES="1", **env)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.1",
                 "Host": "mirror.example.org"}  # fmt: skip
    challenge = proxied.get("/v2/", headers=forwarded).headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="https://mirror.example.org/auth/token"'), challenge
    direct = make_registry(**env)  # no proxy is trusted: a client's own X-Forwarded-* is not
    challenge = direct.get("/v2/", headers=forwarded).headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="http://mirror.example.org/auth/token"'), challenge


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize("scheme", ["basic", "token"])
def test_every_malformed_credential_is_a_401(make_registry, hashed, scheme) -> None:
    """Tokens signed with the registry's own secret (as only it could sign them) whose payload
    is no claim, and Basic headers that are no name and password: refused, never a 500. Those
    that are a name and a wrong password count as failed logins: enough are allowed here that
    none is a 429."""
    private = make_registry(NIXERY_AUTH=scheme, NIXERY_AUTH_USERS=f"alice:{hashed}",
                            NIXERY_AUTH_SECRET=SECRET,
                            NIXERY_AUTH_FAILURES="1000/60")  # fmt: skip
    tokens = URLSafeTimedSerializer(SECRET, salt=TOKEN_SALT)
    signer = tokens.make_signer()
    signed = [
        signer.sign(base64_encode(b"not json")),
        signer.sign(b"!!not base64!!"),
        signer.sign(b"." + base64_encode(b"not zlib")),
        signer.sign(b"." + base64_encode(zlib.compress(b"not json"))),
        *(tokens.dumps(claims) for claims in (
            [1, 2], "alice", None, 7, {}, {"sub": 1}, {"sub": ["alice"]}, {"sub": {"alice": 1}},
            {"sub": None}, {"sub": "mallory"},
        )),
    ]  # fmt: skip
    headers = [f"Bearer {t.decode() if isinstance(t, bytes) else t}" for t in signed] + [
        "Basic é", "Basic !!!", "Basic", "Basic  ", _basic(b"no colon"), _basic(b"\xff\xfe:pw"),
        _basic(b":" + PASSWORD.encode()), _basic(b"alice:"), _basic("ålice:x".encode()),
        _basic(b"alice\x00:" + PASSWORD.encode()), "Bearer", "Bearer a=b,c", "Digest x",
        "basic" + _basic(b"alice:x")[5:] + " trailing",
    ]  # fmt: skip
    for header in headers:
        for path in ("/v2/", "/v2/hello/manifests/latest", "/auth/token"):
            answer = private.get(path, headers={"Authorization": header})
            assert answer.status_code == 401, (header, path, answer.status_code, answer.text)
            assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "Traceback" not in private.log()


def _ask(reg: Registry, source: str, user: str, password: str, path: str = "/v2/"):
    """One request from the loopback address ``source``: its status, headers and body."""
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60,
                                      source_address=(source, 0))  # fmt: skip
    try:
        conn.request("GET", path, headers={"Authorization": _basic(f"{user}:{password}".encode())})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def _throttled(answer) -> bool:
    status, headers, body = answer
    if status != 429:
        return False
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    return True


FAILURES = 4


@pytest.fixture
def throttled(make_registry, hashed) -> Registry:
    """A registry that takes FAILURES failed logins an hour from an address or for a user."""
    return make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hashed},dave:{hashed}",
                         NIXERY_AUTH_FAILURES=f"{FAILURES}/3600")  # fmt: skip


def test_a_flood_of_wrong_passwords_is_throttled_per_address_before_hashing(throttled) -> None:
    """Eight addresses send wrong passwords, each for user names of its own; each is refused
    429 after FAILURES failed logins, without a password checked (each checked one is logged),
    while clients that logged in before (Basic, whose login is remembered, and a token) are
    answered all along, and a new login after the flood is checked as usual."""
    assert _ask(throttled, "127.0.0.1", "alice", PASSWORD)[0] == 200
    token = throttled.get("/auth/token", auth=("alice", PASSWORD)).json()["token"]
    attackers = [f"127.0.0.{i}" for i in range(2, 10)]
    answers: dict[str, list] = {a: [] for a in attackers}

    def flood(source: str) -> None:
        for n in range(500):  # a bound; each stops at its third 429
            answers[source].append(_ask(throttled, source, f"{source}-{n}", "wrong"))
            if sum(map(_throttled, answers[source][-3:])) == 3:
                return

    served = []
    with ThreadPoolExecutor(len(attackers)) as pool:
        flooding = [pool.submit(flood, a) for a in attackers]
        while not all(f.done() for f in flooding):
            served.append(_ask(throttled, "127.0.0.1", "alice", PASSWORD)[0])
            bearer = {"Authorization": f"Bearer {token}"}
            served.append(throttled.get("/v2/", headers=bearer).status_code)
        for f in flooding:
            f.result()
    assert served and set(served) == {200}, served
    log = throttled.log()
    for source, seen in answers.items():
        first = next(i for i, a in enumerate(seen) if _throttled(a))
        # 503: the checks were busy with others' passwords; counted as failed too.
        assert len(seen[:first]) == FAILURES and {a[0] for a in seen[:first]} <= {401, 503}
        assert all(_throttled(a) for a in seen[first:]), source
        checked = [a[0] for a in seen].count(401)
        assert log.count(f"refused {source}-") == checked, "no password checked past the limit"
        assert f"address {source}: {FAILURES} failed logins" in log
    assert _ask(throttled, "127.0.0.10", "dave", PASSWORD)[0] == 200, "a login checked after"
    assert _throttled(_ask(throttled, "127.0.0.2", "carol", "x")), "unchecked from a flooder"


def test_wrong_passwords_for_one_user_are_throttled_from_every_address(throttled) -> None:
    """Guessing one user's password from many addresses: after FAILURES wrong ones, that user
    name is refused 429, unchecked, the right password too, from every address the user has
    not logged in from (one that has goes on: see the test below); other user names are
    checked as before."""
    for i in range(FAILURES):
        assert _ask(throttled, f"127.0.0.{i + 2}", "alice", f"guess {i}")[0] == 401
    assert _throttled(_ask(throttled, "127.0.0.20", "alice", "another guess"))
    assert _throttled(_ask(throttled, "127.0.0.21", "alice", PASSWORD)), "a login unchecked"
    assert _ask(throttled, "127.0.0.20", "bob", "a guess")[0] == 401, "another user name"
    assert throttled.log().count("refused alice") == FAILURES


def test_passwords_checked_at_once_are_bounded(make_registry, hashed) -> None:
    """Past NIXERY_AUTH_CHECKS passwords being checked, another is answered at once with a 503
    and Retry-After: the server's CPU is busy, which is not that client's fault."""
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hashed}",
                        NIXERY_AUTH_CHECKS="1")  # fmt: skip
    busy = []
    for round in range(10):  # until two checks overlap, which they do nearly always at once
        sources = [f"127.0.{round + 1}.{i}" for i in range(1, 13)]
        barrier = threading.Barrier(len(sources))

        def one(source: str, barrier: threading.Barrier = barrier):
            barrier.wait()
            return _ask(reg, source, f"bob-{source}", "wrong")

        with ThreadPoolExecutor(len(sources)) as pool:
            seen = list(pool.map(one, sources))
        assert {s for s, _, _ in seen} <= {401, 503}
        busy = [(h, b) for s, h, b in seen if s == 503]
        if busy:
            break
    assert busy, "no two checks overlapped in ten rounds"
    headers, body = busy[0]
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"


SHORT_REMEMBER = 1.0


@pytest.fixture
def forgetful(tmp_path, hashed) -> Iterator[Registry]:
    """A registry like ``throttled`` that remembers a checked login for SHORT_REMEMBER
    seconds rather than minutes: the command, wrapped to shorten REMEMBER before it serves."""
    command = tmp_path / "nixery-forgetful"
    command.write_text(f"#!{sys.executable}\nimport sys\nimport nixery.http.auth\n"
                       f"nixery.http.auth.REMEMBER = {SHORT_REMEMBER}\n"
                       "from nixery.cli import main\nsys.exit(main())\n")  # fmt: skip
    command.chmod(0o755)
    reg = Registry(tmp_path / "storage", NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hashed}",
                   NIXERY_AUTH_FAILURES=f"{FAILURES}/3600")  # fmt: skip
    reg.nixery = command
    yield reg.start()
    reg.stop()


def test_guesses_of_a_user_name_do_not_lock_out_a_client_logged_in_as_that_user(
    forgetful,
) -> None:
    """Strangers guessing alice's password from many addresses soon get 429s for her name;
    alice, who logged in from 127.0.0.1, is served all along, and after a pause long enough
    for her login to be forgotten too: her password is checked again, and where she logged
    in before (a day's memory) only her address's failed logins count, not her name's."""
    assert _ask(forgetful, "127.0.0.1", "alice", PASSWORD)[0] == 200
    for i in range(FAILURES + 3):
        guess = _ask(forgetful, f"127.0.0.{i + 2}", "alice", f"guess {i}")
        assert guess[0] == 401 if i < FAILURES else _throttled(guess), (i, guess)
        assert _ask(forgetful, "127.0.0.1", "alice", PASSWORD)[0] == 200
    time.sleep(SHORT_REMEMBER + 1)  # her login forgotten (no timing is asserted)
    assert _ask(forgetful, "127.0.0.1", "alice", PASSWORD)[0] == 200, forgetful.log()
    assert _throttled(_ask(forgetful, "127.0.0.30", "alice", "a guess from elsewhere"))


def test_parallel_requests_of_a_new_login_are_checked_once_and_never_fail(
    make_registry, hashed
) -> None:
    """A client's first requests come in parallel with one password: one checks it, the others
    wait for that check; a request refused 503 because the checks are busy with another user's
    password (NIXERY_AUTH_CHECKS=1) counts against its address only, not its user name, which
    then still has all its failed logins left."""
    failures = 16
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hashed},dave:{hashed}",
                        NIXERY_AUTH_CHECKS="1",
                        NIXERY_AUTH_FAILURES=f"{failures}/3600")  # fmt: skip
    clients = [("127.0.0.1", "alice")] * 8 + [("127.0.0.2", "dave")] * 8
    barrier = threading.Barrier(len(clients))

    def one(client: tuple[str, str]) -> int:
        barrier.wait()
        return _ask(reg, client[0], client[1], PASSWORD)[0]

    with ThreadPoolExecutor(len(clients)) as pool:
        seen = list(pool.map(one, clients))
    assert set(seen) <= {200, 503}, seen
    assert seen.count(200) >= 8, "each credential checked once, the waiting requests served"
    for user in ("alice", "dave"):
        guesses = [_ask(reg, f"127.0.1.{i}", user, "wrong")[0] for i in range(failures + 1)]
        assert guesses == [401] * failures + [429], (user, guesses)


@pytest.mark.parametrize("trusted", [1, 0])
def test_failed_logins_count_by_the_address_the_trusted_proxies_forward(
    make_registry, hashed, trusted
) -> None:
    """Behind one trusted proxy, the client is the last X-Forwarded-For entry (the one the
    proxy added; the first is whatever the client sent); trusting none, it is the socket's
    address whatever the header holds, so that a client cannot pick its own."""
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"alice:{hashed}",
                        NIXERY_AUTH_FAILURES="2/3600",
                        NIXERY_TRUSTED_PROXIES=str(trusted))  # fmt: skip
    client = "192.0.2.7" if trusted else "127.0.0.1"

    def guess(user: str, last: str) -> int:
        headers = {"X-Forwarded-For": f"203.0.113.9, {last}"}
        return reg.get("/v2/", auth=(user, "wrong"), headers=headers).status_code

    assert [guess(f"u{i}", "192.0.2.7") for i in range(3)] == [401, 401, 429]
    assert guess("u3", "192.0.2.8") == (401 if trusted else 429), "another client, or not"
    log = reg.log()
    assert f"refused u0 from {client}" in log and f"address {client}: 2 failed logins" in log
    assert "203.0.113.9" not in log


def test_logins_refused_unchecked_are_counted_in_one_line_per_address(hashed, caplog) -> None:
    """A flood's 429s are thousands a second: each address's are logged as one line with
    their count, with the first refusal LOG_REFUSALS seconds after the last line, and not one
    by one."""
    caplog.set_level(logging.WARNING, "nixery.http.auth")
    clock = FakeClock()
    auth = Auth(AuthSettings("basic", {"alice": hashed}, SECRET.encode(), Rate(1, 3600.0)),
                clock)  # fmt: skip
    for address in ("192.0.2.1", "2001:db8::1"):
        assert not auth.check_password(f"bob-{address}", "a guess", address)
    caplog.clear()  # the lines that say the addresses are throttled
    for n in range(30):
        with pytest.raises(TooManyLogins):
            auth.check_password(f"eve{n}", "a guess", "192.0.2.1" if n % 3 else "2001:db8::2")
    assert "refused" not in caplog.text
    clock.advance(LOG_REFUSALS)
    with pytest.raises(TooManyLogins):
        auth.check_password("eve", "a guess", "192.0.2.1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"address 192.0.2.1: refused 21 logins unchecked in the last {LOG_REFUSALS:.0f} s: "
        "too many failed logins",
        f"address 2001:db8::/64: refused 10 logins unchecked in the last {LOG_REFUSALS:.0f} s: "
        "too many failed logins",
    ]


def test_a_login_refused_for_its_user_names_the_user(hashed, caplog) -> None:
    """The line counting refusals says which count was full: the address's, or (from an
    address with none failed) the user name's."""
    caplog.set_level(logging.WARNING, "nixery.http.auth")
    clock = FakeClock()
    auth = Auth(AuthSettings("basic", {"alice": hashed}, SECRET.encode(), Rate(1, 3600.0)),
                clock)  # fmt: skip
    assert not auth.check_password("bob", "a guess", "192.0.2.1")
    caplog.clear()
    for address in ("192.0.2.1", "192.0.2.9"):
        with pytest.raises(TooManyLogins):
            auth.check_password("bob", "a guess", address)
    clock.advance(LOG_REFUSALS)
    with pytest.raises(TooManyLogins):
        auth.check_password("eve", "a guess", "192.0.2.1")
    assert [r.getMessage() for r in caplog.records] == [
        f"address 192.0.2.1: refused 2 logins unchecked in the last {LOG_REFUSALS:.0f} s: "
        "too many failed logins",
        f"address 192.0.2.9, user bob: refused 1 logins unchecked in the last "
        f"{LOG_REFUSALS:.0f} s: too many failed logins",
    ]
