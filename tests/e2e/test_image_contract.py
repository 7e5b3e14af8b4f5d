"""The image contract (docs/contract.md): what every image holds, line by line, on images
built in both modes, read from their layers and run by podman."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from tests.e2e.test_runtime_images import config_of
from tests.helpers.protocol import OCI

pytestmark = pytest.mark.e2e

CA_BUNDLE = "/etc/ssl/certs/ca-bundle.crt"


@pytest.fixture(scope="module", params=["local", "gcp"])
def target(request, clients):
    reg = request.getfixturevalue({"local": "registry", "gcp": "gcp_registry"}[request.param])
    clients.trust(reg.host)
    return reg


def files_of(target, name: str) -> dict[str, tarfile.TarInfo]:
    """Every entry of the image's layers by its path (no leading slash), the last layer's
    (the image root's) winning, as a runtime stacks them."""
    manifest = target.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI}).json()
    entries: dict[str, tarfile.TarInfo] = {}
    for layer in manifest["layers"]:
        blob = target.get(f"/v2/{name}/blobs/{layer['digest']}", allow_redirects=True)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.content))) as tar:
            for member in tar.getmembers():
                entries[member.name.strip("./")] = member
    return entries


def text_of(target, name: str, path: str) -> str:
    manifest = target.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI}).json()
    blob = target.get(f"/v2/{name}/blobs/{manifest['layers'][-1]['digest']}",
                      allow_redirects=True)  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.content))) as tar:
        member = tar.extractfile(path)
        assert member is not None, path
        return member.read().decode()


def sh(clients, target, name: str, script: str) -> str:
    ran = clients.podman("run", "--rm", f"{target.host}/{name}", "sh", "-c", script)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_every_image_has_the_ca_bundle_and_ssl_cert_file(target, clients):
    for name in ("hello", "shell"):
        assert f"SSL_CERT_FILE={CA_BUNDLE}" in config_of(target, name)["Env"], name
        files = files_of(target, name)
        for link in ("etc/ssl/certs/ca-bundle.crt", "etc/ssl/certs/ca-certificates.crt"):
            assert files[link].issym(), (name, link)
    out = sh(
        clients,
        target,
        "shell",
        'test -s "$SSL_CERT_FILE" && grep -c "BEGIN CERT" "$SSL_CERT_FILE"',
    )
    assert int(out) > 0


def test_every_image_has_passwd_and_group_with_root_and_nobody(target, clients):
    passwd, group = text_of(target, "hello", "etc/passwd"), text_of(target, "hello", "etc/group")
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:65534:" in passwd
    assert passwd.split("\n")[0].split(":")[5] == "/root"
    home = files_of(target, "hello")["root"]
    assert home.isdir() and home.mode == 0o700
    assert group.startswith("root:x:0:") and "\nnogroup:x:65534:" in group
    assert "nixery" not in passwd + group
    assert sh(clients, target, "shell", "id -un; id -gn").split() == ["root", "root"]


def test_a_nonroot_image_adds_nixery_and_a_locked_shadow(target, clients):
    passwd = text_of(target, "nonroot/hello", "etc/passwd")
    assert "\nnixery:x:1000:1000:" in passwd and passwd.startswith("root:x:0:0:")
    assert "\nnixery:x:1000:" in text_of(target, "nonroot/hello", "etc/group")
    assert files_of(target, "nonroot/hello")["etc/shadow"].mode == 0o600
    assert sh(clients, target, "nonroot/shell", "id -un; id -gn").split() == ["nixery", "nixery"]


def test_every_image_has_tmp_with_mode_1777(target, clients):
    tmp = files_of(target, "hello")["tmp"]
    assert tmp.isdir() and tmp.mode == 0o1777
    assert sh(
        clients, target, "nonroot/shell", "stat -c %a /tmp; touch /tmp/x && echo ok"
    ).split() == ["1777", "ok"]


def test_usr_bin_env_exists_with_an_env_program(target, clients):
    assert "usr/bin/env" not in files_of(target, "hello"), "no env program, no /usr/bin/env"
    for name in ("coreutils", "busybox"):
        assert files_of(target, name)["usr/bin/env"].issym(), name
    for name in ("shell", "busybox"):
        assert sh(clients, target, name, "/usr/bin/env sh -c 'echo ok'").strip() == "ok", name


def test_every_image_has_services_and_protocols(target, clients):
    files = files_of(target, "hello")
    assert files["etc/services"].issym() and files["etc/protocols"].issym()
    out = sh(clients, target, "shell", "grep -c . /etc/services /etc/protocols")
    assert all(int(line.rsplit(":", 1)[1]) > 0 for line in out.split())


def test_lang_is_set_with_a_locale_archive_and_only_then(target):
    assert not any(e.startswith("LANG=") for e in config_of(target, "hello")["Env"])
    env = config_of(target, "hello/glibclocales")["Env"]
    assert {"LANG=C.UTF-8", "LC_ALL=C.UTF-8", "LOCALE_ARCHIVE=/lib/locale/locale-archive"} <= set(
        env
    )
    assert files_of(target, "hello/glibclocales")["lib/locale/locale-archive"].issym()


def test_bin_sh_exists_when_a_package_provides_it(target, clients):
    assert "bin/sh" not in files_of(target, "hello"), "no shell asked for, none given"
    for name in ("shell", "busybox", "bashinteractive"):
        assert files_of(target, name)["bin/sh"].issym(), name
        assert sh(clients, target, name, "echo $((6 * 7))").strip() == "42", name
