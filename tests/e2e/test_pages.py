"""The registry's pages in a real browser, and the same information as JSON in both modes.

Debian's chromium, driven by Playwright (never `playwright install`: the system browser is
used). Each page is saved as a screenshot under the test's temporary directory, and also
under $NIXERY_SCREENSHOTS when it is set (how the pictures in docs/pages/ are made).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from nixery.job import image_key
from nixery.records import BuildReport, FailureReport
from nixery.request import parse_name
from nixery.service.catalog import FRONT_TTL
from nixery.sources.path import PathSource
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, OCI, Registry

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
MARKUP = "markup: <script>document.title='pwned'</script> & <b>not bold</b>"
# Built in this order, so the newest (markup) comes first on the front page.
IMAGES = ["shell/hello", "shell/htop", "broken", "markup"]


def manifest(reg: Registry, name: str) -> requests.Response:
    return reg.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI})


def build_url(reg: Registry, name: str) -> str:
    """The page of an image's build, as the registry names it in a failure or lists it."""
    builds = reg.get("/api/v1/registry").json()["builds"]
    return next(b["url"] for b in builds if b["name"] == name)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("pages") / "storage", NIX_TIMEOUT="3").start()
    try:
        for name in IMAGES:
            manifest(reg, name)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/setup.sh --test")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    yield context.new_page()
    context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if target := os.environ.get("NIXERY_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def test_the_front_page_shows_this_host_its_source_and_the_latest_builds(site, page, tmp_path):
    page.goto(site.url + "/")
    assert f"docker pull {site.host}/shell/git/htop" in page.locator("#pull").inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", page.locator("#revision").inner_text())
    assert page.locator("#source").inner_text() == "path", "a path source, not its directory"
    assert "bashInteractive" in page.locator("#meta").inner_text()
    assert "uid and gid 1000" in page.locator("#meta").inner_text(), "nonroot"
    assert "meta.mainProgram" in page.locator("#runs").inner_text()
    rows = page.locator("#builds tr").all_inner_texts()[1:]
    assert [row.split("\t")[0].strip() for row in rows] == list(reversed(IMAGES))
    assert "failed" in rows[0] and "published" in rows[-1]
    assert re.search(r"\d+(\.\d)? (KiB|MiB)", rows[-1]), "a built image's size"
    screenshot(page, tmp_path, "front")
    page.get_by_role("link", name="shell/hello").click()
    assert page.url == build_url(site, "shell/hello")


def test_a_built_image_page_shows_its_packages_layers_and_pull_commands(site, page, tmp_path):
    page.goto(build_url(site, "shell/hello"))
    assert page.locator("#status").inner_text() == "published"
    pull = page.locator("#pull").inner_text()
    assert f"docker pull {site.host}/shell/hello@sha256:" in pull
    assert f"podman pull --tls-verify=false {site.host}/shell/hello@sha256:" in pull
    assert f"ctr image pull --plain-http {site.host}/shell/hello@sha256:" in pull
    packages = page.locator("#packages").inner_text()
    assert re.search(r"hello\s+2\.12\.1\s+/nix/store/\w{32}-hello-2\.12\.1", packages), packages
    layers = page.locator("#layers tr").all_inner_texts()[1:]
    assert len(layers) >= 2
    assert any("shared" in row and "glibc" in row for row in layers), "shared with htop"
    assert "the image root" in layers[-1]
    assert page.locator("#manifests tr").count() == 3  # a header and two media types
    assert page.locator("#closure tr").count() > 5
    steps = page.locator("#steps tr").all_inner_texts()[1:]
    assert steps[0].startswith("queue") and any(row.startswith("realise") for row in steps)
    # The digest the page gives is the one the registry serves.
    served = manifest(site, "shell/hello").headers["Docker-Content-Digest"]
    assert served in pull
    screenshot(page, tmp_path, "image")


def test_a_failed_build_page_shows_the_reason_and_the_log_as_text(site, page, tmp_path):
    failed = manifest(site, "markup")
    assert failed.status_code == 422
    url = re.search(r"http://\S+/builds/[0-9a-f]{64}", failed.json()["errors"][0]["message"])
    assert url, failed.text
    page.goto(url[0])  # the page the client was sent to
    assert page.locator("#status").inner_text() == "failed"
    assert "build_error" in page.locator("#reason").inner_text()
    assert MARKUP in page.locator("#log").inner_text()
    assert page.locator("#log script, #log b").count() == 0, "the log is text, not markup"
    assert page.title() != "pwned"
    assert page.locator("#pull").count() == 0
    screenshot(page, tmp_path, "failed")


def test_an_evaluation_error_names_no_server_path(make_registry, tmp_path):
    """Nix quotes where an evaluation error is (``at /srv/pkgs/default.nix:11:8:``): the
    client's 422, the build's page and /api/v1 name the package set instead; the server's
    log keeps the path."""
    where = tmp_path / "srv-secret" / "pkgs-here"
    shutil.copytree(DEMO, where)
    expression = (where / "default.nix").read_text()
    head = "{ system ? builtins.currentSystem, bootstrap ? null, ... }:\n"
    assert head in expression
    (where / "default.nix").write_text(expression.replace(head, head + "assert undefinedHere;\n"))
    reg = make_registry(NIXERY_PKGS_PATH=str(where), NIXERY_EVAL_ALLOW=DEMO_EVAL_ALLOW)
    failed = manifest(reg, "hello")
    assert failed.status_code == 422, failed.text
    assert "undefinedHere" in failed.text and "<package set>/default.nix" in failed.text
    (build,) = reg.get("/api/v1/registry").json()["builds"]
    shown = [failed, reg.get("/api/v1/registry"), reg.get(f"/api/v1/builds/{build['key']}"),
             reg.get(f"/builds/{build['key']}"), reg.get("/")]  # fmt: skip
    for answer in shown:
        assert answer.status_code in (200, 422), answer.url
        for private in ("srv-secret", str(reg.storage), "prepare-image/"):
            assert private not in answer.text, (answer.url, private)
    assert str(where) in reg.log(), "the server's log keeps it"


def test_an_interruption_the_image_overcame_is_not_shown(make_registry):
    """A report left saying "interrupted" (another build published the image, or its
    publication raised after it was made): the image's status is the authority, on the
    build's page, its JSON and the front page; no retry is promised."""
    reg = make_registry()
    assert manifest(reg, "shell/hello").status_code == 200
    (build,) = reg.get("/api/v1/registry").json()["builds"]
    with contextlib.closing(sqlite3.connect(reg.storage / "state.sqlite3")) as db, db:
        (text,) = db.execute("SELECT report FROM reports WHERE key = ?", (build["key"],)).fetchone()
        failure = FailureReport("interrupted", "the database was unavailable", "")
        stale = replace(BuildReport.decode(text), status="interrupted", failure=failure)
        db.execute("UPDATE reports SET report = ? WHERE key = ?", (stale.encode(), build["key"]))
    time.sleep(FRONT_TTL)  # the front page's builds are kept that long
    report = reg.get(f"/api/v1/builds/{build['key']}").json()
    assert report["status"] == "published" and "retry" not in report, report
    assert report["failure"] is None and report["reason"] is None
    page = reg.get(f"/builds/{build['key']}").text
    assert "Interrupted" not in page and "database" not in page
    (listed,) = reg.get("/api/v1/registry").json()["builds"]
    assert listed["status"] == "published" and "retry" not in listed and not listed["failure"]
    assert "database" not in reg.get("/").text


def test_the_search_box_finds_nested_attribute_names(site, page, tmp_path):
    page.goto(site.url + "/")
    page.get_by_label("Search packages").fill("requests")
    page.get_by_role("button", name="Search").click()
    results = page.locator("#results").inner_text()
    assert "python3Packages.requests" in results
    assert f"docker pull {site.host}/shell/python3packages.requests" in results
    screenshot(page, tmp_path, "search")


def test_the_pages_fit_a_phone(site, browser, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    try:
        for name, url in [("phone-front", site.url + "/"),
                          ("phone-image", build_url(site, "shell/hello"))]:  # fmt: skip
            phone.goto(url)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{url} scrolls sideways ({width}px)"
            screenshot(phone, tmp_path, name)
    finally:
        context.close()


def test_a_build_under_way_shows_its_step(make_registry, page, tmp_path):
    reg = make_registry()  # Nix's default timeout: `slow` builds until the registry stops

    def pull() -> None:
        with contextlib.suppress(requests.RequestException):  # the registry stops under it
            manifest(reg, "slow")

    threading.Thread(target=pull, daemon=True).start()
    while "slow: sleeping" not in reg.log():
        time.sleep(0.1)
    page.goto(build_url(reg, "slow"))
    assert page.locator("#status").inner_text() == "building"
    assert "nix" in page.locator("#step").inner_text()
    screenshot(page, tmp_path, "building")


# The JSON under /api/v1/, in both modes.


def check_json(reg: Registry) -> None:
    for name in ("shell/hello", "broken"):
        manifest(reg, name)
    front = reg.get("/api/v1/registry").json()
    assert front["host"] == reg.host and front["revision"]
    builds = {b["name"]: b for b in front["builds"]}
    assert builds["shell/hello"]["status"] == "published" and builds["shell/hello"]["size"] > 0
    assert builds["broken"]["status"] == "failed"
    hello = reg.get(f"/api/v1/builds/{builds['shell/hello']['key']}").json()
    assert hello["status"] == "published" and len(hello["manifests"]) == 2
    assert all(layer["size"] > 0 for layer in hello["layers"])
    assert sum(len(layer["paths"]) for layer in hello["layers"]) == len(hello["closure"])
    assert {p["attribute"]: p["version"] for p in hello["packages"]}["hello"] == "2.12.1"
    assert any(f"{reg.host}/shell/hello@sha256:" in line for line in hello["pull"])
    # Each step's times, in the order they began, from the enqueue on.
    steps = [s["step"] for s in hello["steps"]]
    assert steps[0] == "queue" and hello["steps"][0]["at"] == 0
    order = ["checkout", "evaluate", "realise", "layer", "archive", "upload", "sbom",
             "manifests", "publish"]  # fmt: skip
    assert [s for s in steps if s in order] == order, steps
    assert set(steps) <= {"queue", "names", "answer", *order}, steps
    assert all(s["ended"] >= s["began"] and s["seconds"] >= 0 for s in hello["steps"])
    deadline = time.monotonic() + 10  # the answer is noted off the request's path
    while hello["steps"][-1]["step"] != "answer":
        assert time.monotonic() < deadline, hello["steps"]
        time.sleep(0.2)
        hello = reg.get(f"/api/v1/builds/{builds['shell/hello']['key']}").json()
    broken = reg.get(f"/api/v1/builds/{builds['broken']['key']}").json()
    assert broken["status"] == "failed" and broken["reason"] == "build_error"
    assert "broken is broken on purpose" in broken["log"]
    found = reg.get("/api/v1/packages", params={"q": "Requests"}).json()
    assert [r["attribute"] for r in found["results"]] == ["python3Packages.requests"]
    assert reg.get("/api/v1/builds/" + "0" * 64).status_code == 404
    assert reg.get("/api/v1/builds/not-a-key").status_code == 404


def test_a_name_that_lists_cacert_itself_is_shown_and_pulled_as_it_was(site):
    """``cacert/hello`` is another key than ``hello`` (a flake lacking cacert fails it rather
    than going without): the page's name and pull commands must lead to that image."""
    assert manifest(site, "cacert/hello").status_code == 200
    key = image_key(parse_name("cacert/hello"), PathSource(DEMO).resolve("latest"))
    report = site.get(f"/api/v1/builds/{key}").json()
    assert any(f"{site.host}/cacert/hello@sha256:" in line for line in report["pull"])


def test_the_json_in_local_mode(site):
    check_json(site)


def test_the_json_on_google_cloud(gcp_registry):
    check_json(gcp_registry)
