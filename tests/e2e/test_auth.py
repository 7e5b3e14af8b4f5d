"""A private registry: HTTP Basic and Docker's bearer tokens, with real clients (skopeo,
podman, containerd's ctr), and the errors and logs a refused client leaves."""

from __future__ import annotations

import subprocess
import time

import pytest

from nixery.config import AuthSettings, Env, auth_settings
from nixery.errors import ConfigError
from nixery.http.auth import TOKEN_TTL, Auth, hash_password
from tests.helpers.clients import Containerd
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
    assert auth.check_password("alice", PASSWORD)
    assert not auth.check_password("alice", PASSWORD + "!")
    assert not auth.check_password("bob", PASSWORD), "an unknown user"


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
