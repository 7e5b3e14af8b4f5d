"""The runtime rule and the `nonroot` meta-package on real images, in both modes: the config
each image is served with, and what podman runs from it."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.protocol import OCI

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["local", "gcp"])
def target(request, clients):
    reg = request.getfixturevalue({"local": "registry", "gcp": "gcp_registry"}[request.param])
    clients.trust(reg.host)
    return reg


def config_of(target, name: str) -> dict:
    response = target.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})
    assert response.status_code == 200, response.text
    digest = response.json()["config"]["digest"]
    blob = target.get(f"/v2/{name}/blobs/{digest}", allow_redirects=True)
    assert blob.status_code == 200
    return json.loads(blob.content)["config"]


def test_entrypoint_rule_on_the_demo_set(target):
    assert config_of(target, "shell/jq")["Cmd"] == ["bash"], "a shell wins"
    assert "Entrypoint" not in config_of(target, "shell/jq")
    jq = config_of(target, "jq")  # the demo jq declares meta.mainProgram = "jq"
    assert jq["Entrypoint"] == ["/bin/jq"] and "Cmd" not in jq
    for name in ("hello", "jq/hello"):  # no main program; two packages
        config = config_of(target, name)
        assert "Entrypoint" not in config and "Cmd" not in config, name
    assert not any(e.startswith("LANG=") for e in jq["Env"])
    locale = config_of(target, "hello/glibclocales")["Env"]
    assert {"LANG=C.UTF-8", "LC_ALL=C.UTF-8"} <= set(locale)
    assert (
        locale[:2]
        == jq["Env"][:2]
        == [
            "PATH=/bin:/sbin:/usr/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
        ]
    )


def test_podman_runs_the_entrypoint(target, clients):
    ran = clients.podman("run", "--rm", f"{target.host}/jq")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "jq 1.7"


def test_nonroot_runs_as_its_user_with_a_writable_home_and_tmp(target, clients):
    # hello: an image no other test builds, so that its build is among the front page's
    # latest, whatever ran before on this session's registry.
    config = config_of(target, "nonroot/shell/hello")
    assert (config["User"], config["WorkingDir"]) == ("1000:1000", "/home/nixery")
    script = (
        "id -u; id -g; pwd; echo $HOME; touch $HOME/x && echo home-ok; "
        "touch /tmp/x && echo tmp-ok; ls -ld /tmp; touch /etc/x 2>/dev/null || echo etc-refused"
    )
    image = f"{target.host}/nonroot/shell/hello"
    ran = clients.podman("run", "--rm", image, "bash", "-c", script)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.split()
    assert lines[:4] == ["1000", "1000", "/home/nixery", "/home/nixery"], ran.stdout
    assert "home-ok" in lines and "tmp-ok" in lines and "etc-refused" in lines
    assert "drwxrwxrwt" in ran.stdout
    for _ in range(30):  # the front page's list is cached for seconds
        names = {b["name"] for b in target.get("/api/v1/registry").json()["builds"]}
        if "nonroot/shell/hello" in names:
            break
        time.sleep(0.5)
    assert "nonroot/shell/hello" in names, "its page names the image as it is pulled"


def test_a_root_image_still_runs_as_root(target, clients):
    assert "User" not in config_of(target, "shell")
    ran = clients.podman("run", "--rm", f"{target.host}/shell", "bash", "-c", "id -u; pwd")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["0", "/"]
