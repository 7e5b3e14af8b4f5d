"""What the pages and the error messages make of builds, without a server: the message a
client prints, image names, versions from store paths, and suggestions for unknown names."""

from __future__ import annotations

import pytest
from flask import Flask

from nixery.errors import BuildFailed, BuildTimedOut, UnknownPackages
from nixery.http import pages
from nixery.job import image_key
from nixery.records import Failure, Revision
from nixery.request import parse_name, suggest

KEY = "ab" * 32
LOG = "\n".join([
    "these 2 derivations will be built:",
    "  /nix/store/aaaa-broken-1.0.drv",
    "building '/nix/store/aaaa-broken-1.0.drv'...",
    *(f"step {i}" for i in range(10)),
    "error: broken is broken on purpose \x1b[31mé\x1b[0m",
    "",
])  # fmt: skip


def explained(error, public_url: str | None = None) -> pages.Explained:
    app = Flask(__name__)
    app.config[pages.PUBLIC_URL] = public_url
    with app.test_request_context(
        "/v2/broken/manifests/latest", base_url="http://reg.example:5000"
    ):
        return pages.explain(error, KEY)


def test_a_failure_names_what_failed_nix_s_last_lines_and_the_build_page():
    found = explained(BuildFailed("building failed: broken is broken on purpose", LOG))
    lines = found.message.splitlines()
    assert lines[0] == "building failed: broken is broken on purpose"
    assert lines[-1] == f"details: http://reg.example:5000/builds/{KEY}"
    tail = lines[1:-1]
    assert len(tail) == pages.CLIENT_LOG_LINES and tail[-1].startswith("  error: broken")
    assert not any("derivation" in line or "building '" in line for line in tail), tail
    assert found.detail == {"log": LOG, "url": f"http://reg.example:5000/builds/{KEY}"}


def test_the_status_line_is_one_short_line_of_printable_ascii_with_the_page():
    long = "a timeout\nwith \x1b[31mcolour\r\n and é " + "x" * 2000
    reason = explained(BuildTimedOut(long, ""), "https://nixery.example.org").reason
    assert reason.endswith(f"(details: https://nixery.example.org/builds/{KEY})")
    assert len(reason) <= pages.MAX_REASON
    assert all(" " <= c <= "~" for c in reason), reason
    assert reason.startswith("a timeout with ?[31mcolour and ? x")


@pytest.mark.parametrize(
    "name", ["hello", "cacert/hello", "shell/bashinteractive/hello", "cacert", "nonroot/iana-etc"]
)
def test_the_name_a_page_shows_gives_the_images_key(name: str) -> None:
    request = parse_name(name)
    shown = pages.image_name(request.packages, "x86_64-linux", request.nonroot, request.asked)
    revision = Revision("path:x", "1")
    assert image_key(parse_name(shown), revision) == image_key(request, revision)


def test_image_names_pull_exactly_the_packages():
    shell = ("bashInteractive", "cacert", "coreutils", "hello", "iana-etc", "moreutils", "nano")
    assert pages.image_name(shell, "x86_64-linux") == "shell/hello"
    assert pages.image_name(("cacert", "iana-etc", "_1password"), "x86_64-linux") == "1password"
    nested = ("cacert", "iana-etc", "python3Packages.requests")
    assert pages.image_name(nested, "aarch64-linux") == "arm64/python3packages.requests"
    assert pages.image_name(("cacert", "iana-etc"), "x86_64-linux") == "cacert"
    assert pages.image_name(shell, "x86_64-linux", nonroot=True) == "nonroot/shell/hello"
    # Named by the name itself, which makes another key: the name keeps them.
    packages = ("cacert", "hello", "iana-etc")
    assert pages.image_name(packages, "x86_64-linux", asked=("cacert",)) == "cacert/hello"
    assert pages.image_name(shell, "x86_64-linux", asked=("bashinteractive",)) == (
        "shell/bashinteractive/hello"
    )


def test_an_unknown_name_gets_the_names_it_may_have_meant():
    names = ["hello", "htop", "python3", "python3Packages.requests", "ripgrep"]
    assert suggest("requests", names) == ["python3Packages.requests"]
    assert suggest("helo", names) == ["hello"]
    assert suggest("RipGrep", names) == ["ripgrep"]
    assert suggest("zzz", names) == []


def test_suggestions_are_in_the_message_and_survive_being_remembered():
    error = UnknownPackages(["requests", "zzz"], {"requests": ["python3Packages.requests"]})
    assert error.message == (
        "unknown packages: requests (did you mean python3Packages.requests?), zzz"
    )
    again = Failure.of(error, 0.0).error()
    assert (again.message, again.detail) == (error.message, error.detail)
    assert UnknownPackages(["x"], {"x": []}).detail == {"packages": ["x"]}
