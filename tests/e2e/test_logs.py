"""What a stranger's request writes into the server's log: in the local text log, one line per
record whatever the request holds (an encoded line break in the path, one in a user name);
in the JSON log of Google Cloud mode (K_SERVICE set), one JSON object per line, the values
intact."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import urllib.parse

import pytest

from nixery import logs
from tests.helpers.registries import NIXERY, Registry

pytestmark = pytest.mark.e2e

FORGED = "2026-01-01 00:00:00,000 WARNING nixery: FORGED"
FORGED_USER = "FORGED-by-a-user-name"  # no colon: Basic ends the name at the first one
# Each way to end a line that some reader of the log splits on, then a forged record.
BREAKS = ["%0a", "%0d", "%0d%0a", "%e2%80%a8", "%c2%85", "%0b", "%1b[2K%0d"]
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +\S+: ")


@pytest.fixture(scope="module")
def hashed() -> str:
    return subprocess.run([str(NIXERY), "hash-password"], input="pw\n", capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


def attack(reg: Registry) -> None:
    """Paths and Basic user names that carry line breaks, each followed by a forged record."""
    forged = FORGED.replace(" ", "%20")
    for brk in BREAKS:
        assert reg.get(f"/v2/hello{brk}{forged}/manifests/latest").status_code in (400, 401)
        assert reg.get(f"/nothing{brk}{forged}").status_code == 404
        user = urllib.parse.unquote(brk) + FORGED_USER
        header = "Basic " + base64.b64encode(f"{user}:wrong".encode()).decode()
        assert reg.get("/v2/", headers={"Authorization": header}).status_code == 401


def test_the_text_log_has_one_line_per_record_whatever_a_request_holds(
    make_registry, hashed
) -> None:
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"bob:{hashed}")
    attack(reg)
    lines = reg.log().splitlines()
    for line in lines:
        assert not line.startswith((FORGED, FORGED_USER)), "a forged record"
        assert "FORGED" not in line or RECORD.match(line), line
        assert "\x1b" not in line, "a terminal's escape sequence"
    assert sum(f"refused \\n{FORGED_USER}" in line for line in lines) == 1, "escaped, not dropped"


def test_the_text_log_tells_an_escape_from_a_backslash_and_shows_no_direction_mark(
    make_registry,
) -> None:
    """A path with a backslash and an ``n`` is not written as one with a line break; the
    direction marks (LRM, RLM, ALM) that reorder what a terminal shows are escaped too."""
    reg = make_registry()
    for path in ("/literal%5Cn", "/broken%0An", "/marked%E2%80%8Fx%E2%80%8Ey%D8%9Cz"):
        assert reg.get(path).status_code == 404
    log = reg.log()
    assert "GET /literal\\\\n 404" in log and "GET /broken\\nn 404" in log, log
    assert "GET /marked\\u200fx\\u200ey\\u061cz 404" in log, log
    assert not any(mark in log for mark in "\u200e\u200f\u061c")


def test_the_json_log_has_one_object_per_line_with_the_values_intact(make_registry, hashed) -> None:
    reg = make_registry(NIXERY_AUTH="basic", NIXERY_AUTH_USERS=f"bob:{hashed}",
                        K_SERVICE="nixery-test")  # fmt: skip
    attack(reg)
    entries = [json.loads(line) for line in reg.log().splitlines() if line.startswith("{")]
    assert len(entries) == len(reg.log().splitlines())
    refused = [e["user"] for e in entries if e["message"].startswith("refused ")]
    assert "\n" + FORGED_USER in refused and "\u2028" + FORGED_USER in refused
    paths = {e.get("path") for e in entries}
    assert "/nothing\r\n" + FORGED in paths


def test_a_traceback_follows_its_record_indented_and_escaped() -> None:
    """Waitress logs a path inside its own message, and an exception's text may hold a
    request's values: no line of either can pass for a record."""
    formatter = logs.TextFormatter()
    path = "/v2/x\n" + FORGED
    waitress = f"Client disconnected while serving {path}"  # its own words, path included
    record = logging.LogRecord("waitress", logging.INFO, __file__, 1, waitress, None, None)
    assert formatter.format(record).count("\n") == 0
    try:
        raise ValueError(f"bad name {path}\r\u2028{FORGED}")
    except ValueError as e:
        record = logging.LogRecord("nixery", logging.ERROR, __file__, 1, "failed: %s", (path,),
                                   (type(e), e, e.__traceback__))  # fmt: skip
    first, *rest = formatter.format(record).split("\n")
    assert first.endswith("failed: /v2/x\\n" + FORGED)
    assert rest and all(line.startswith("    ") for line in rest), rest
    assert not any(c in "".join(rest) for c in "\r\u2028")
