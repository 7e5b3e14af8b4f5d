"""Property-based tests of the registry protocol: whatever a client sends (names, tags,
digests, Accept headers, methods, ranges, paging), the answer is never a 5xx nor a
traceback, and every error is a JSON body with a registry error code.

Most run in-process against the Flask app, wired as local mode wires it but with a build
queue that refuses to build, so that no example can start Nix: the strategies keep a valid
name away from the one tag (`latest`) that would need a build. The Accept properties need a
built image and run over HTTP against the session registry.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixery.blobs import store_bytes
from nixery.errors import InvalidPageSize
from nixery.http.protocol import create_app, page_tags
from nixery.local.file_blob_store import FileBlobStore
from nixery.local.sqlite_state import SqliteDatabase
from nixery.oci.manifests import sha256_digest
from nixery.service.images import ImageService
from nixery.sources.path import PathSource
from tests.helpers.protocol import DOCKER, DOCKER_LIST, ERROR_CODES, OCI, OCI_INDEX, raw
from tests.helpers.registries import DEMO

# Derandomized, with no example database: CI runs the same examples every time, so a failure
# reproduces, and nothing is written into the working tree.
FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BLOB = bytes(range(256)) * 8  # a blob to fetch ranges of


class RefusingBuilds:
    """A build queue that records what it was asked to build and builds nothing."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def build(self, job, wait: float) -> None:
        self.asked.append(job.key)
        raise AssertionError("a property test asked for a build")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    storage = tmp_path_factory.mktemp("properties")
    blobs = FileBlobStore(storage)
    store_bytes(blobs, sha256_digest(BLOB), BLOB)
    builds = RefusingBuilds()
    service = ImageService(
        source=PathSource(DEMO),
        images=SqliteDatabase(storage / "state.sqlite3").ports().images,
        blobs=blobs,
        builds=builds,
        wait=1,
        failure_ttl=300,
    )
    flask_app = create_app(service, None)
    yield flask_app.test_client()
    assert builds.asked == [], "no property may start a build"


def check(response, method: str) -> None:
    """What holds for every answer under /v2/."""
    body = response.get_data()
    assert response.status_code < 500, body[:2000]
    assert b"Traceback" not in body
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    if response.status_code < 400:
        return
    assert response.headers["Content-Type"] == "application/json"
    if method == "HEAD":
        assert body == b""
        return
    errors = json.loads(body)["errors"]
    assert isinstance(errors, list) and errors
    for error in errors:
        assert error["code"] in ERROR_CODES
        assert isinstance(error["message"], str)


# Strategies

# The spec's repository name grammar ("Pulling manifests"), written out again here.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_GRAMMAR = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")

ascii_text = st.text(alphabet=string.printable.strip() + " ", max_size=40)
component = st.from_regex(_COMPONENT, fullmatch=True).filter(lambda c: len(c) <= 40)
valid_names = st.lists(component, min_size=1, max_size=6).map("/".join)  # at most 245 long
names = st.one_of(
    valid_names,
    st.text(min_size=1, max_size=300),  # any unicode
    st.lists(st.text(alphabet="abAB09._-é/", max_size=8), min_size=1, max_size=90).map("/".join),
    st.integers(240, 300).map(lambda n: "a" * n),  # around the 255-character limit
    st.integers(55, 70).map(lambda n: "/".join(f"p{i}" for i in range(n))),  # many packages
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,130}", fullmatch=True)
digests = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h),
    st.builds(
        "{}:{}".format,
        st.from_regex(r"[a-z0-9]{1,8}(?:[+._-][a-z0-9]{1,4})?", fullmatch=True),
        st.text(alphabet=string.hexdigits + "=_-", max_size=130),
    ),
)
# Never `latest`: with a valid name it would build an image.
references = st.one_of(tags, digests, st.text(min_size=1, max_size=200)).filter(
    lambda r: r != "latest"
)
media_types = st.one_of(
    st.sampled_from([OCI, DOCKER, OCI_INDEX, DOCKER_LIST, "*/*", "application/*", "text/html"]),
    ascii_text,
)
params = st.sampled_from(["", ";q=0", ";q=0.0", ";q=0.5", ";q=1", ";q=abc", ";q=", "; level=1"])
accept_items = st.builds(str.__add__, media_types, params)
accept_lines = st.lists(st.lists(accept_items, max_size=5).map(", ".join), max_size=4)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
endpoints = st.sampled_from(
    [
        "manifests/{ref}",
        "blobs/{ref}",
        "tags/list",
        "blobs/uploads/",
        "blobs/uploads/{ref}",
        "{ref}",
    ]
)
page_params = st.one_of(st.none(), st.integers(-3, 10**12).map(str), ascii_text)


def quote(text: str, safe: str = "") -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe=safe)


# Properties


@FAST
@given(name=names, reference=references, endpoint=endpoints, method=methods, accept=accept_lines)
def test_any_request_gets_a_registry_answer(app, name, reference, endpoint, method, accept):
    path = f"/v2/{quote(name, '/')}/" + endpoint.format(ref=quote(reference))
    headers = [("Accept", line) for line in accept]
    check(app.open(path, method=method, headers=headers), method)


@FAST
@given(
    name=valid_names,
    tag=tags.filter(lambda t: t != "latest"),
    method=st.sampled_from(["GET", "HEAD"]),
)
def test_a_valid_name_with_an_unknown_tag_is_404_manifest_unknown(app, name, tag, method):
    response = app.open(f"/v2/{name}/manifests/{tag}", method=method)
    check(response, method)
    assert response.status_code == 404
    if method == "GET":
        assert response.get_json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


@FAST
@given(name=valid_names, digest=digests, method=st.sampled_from(["GET", "HEAD"]))
def test_a_digest_is_found_or_404_or_400_digest_invalid(app, name, digest, method):
    for endpoint in ("manifests", "blobs"):
        response = app.open(f"/v2/{name}/{endpoint}/{quote(digest)}", method=method)
        check(response, method)
        assert response.status_code in (200, 400, 404)
        if response.status_code == 400 and method == "GET":
            assert response.get_json()["errors"][0]["code"] in {"DIGEST_INVALID", "NAME_INVALID"}


@FAST
@given(name=names, method=st.sampled_from(["GET", "HEAD"]))
def test_a_name_is_valid_exactly_when_it_follows_the_spec_grammar(app, name, method):
    response = app.open(f"/v2/{quote(name, '/')}/tags/list", method=method)
    check(response, method)
    packages = {"cacert", "iana-etc"}
    for c in name.split("/"):
        if c == "shell":
            packages |= {"bashInteractive", "coreutils", "moreutils", "nano"}
        elif c != "arm64":
            packages.add(c)
    fits = NAME_GRAMMAR.fullmatch(name) and len(name) <= 255 and len(packages) <= 64
    assert (response.status_code == 200) == bool(fits), name


@FAST
@given(n=page_params, last=page_params)
def test_tags_list_paging_is_a_page_or_400(app, n, last):
    query = {k: v for k, v in (("n", n), ("last", last)) if v is not None}
    response = app.get("/v2/shell/hello/tags/list", query_string=query)
    check(response, "GET")
    if response.status_code == 200:
        body = response.get_json()
        expected = [t for t in ["latest"] if not last or t > last]
        if n:
            expected = expected[: int(n)]
        assert body == {"name": "shell/hello", "tags": expected}
        assert "Link" not in response.headers  # one tag: never a further page
    else:
        assert response.status_code == 400
        assert response.get_json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


@FAST
@given(tag_set=st.sets(tags, max_size=30), n=st.integers(1, 8), last=st.none() | tags)
def test_paging_through_any_tag_list_gives_each_tag_once_in_order(tag_set, n, last):
    """The paging the Link header drives, on tag lists longer than this registry's own."""
    expected = sorted(t for t in tag_set if last is None or t > last)
    seen: list[str] = []
    while True:
        page, last = page_tags(tag_set, str(n), last)
        assert len(page) <= n
        seen += page
        if last is None:
            break
        assert len(page) == n and last == page[-1]
    assert seen == expected


@given(n=ascii_text.filter(lambda n: n and not n.isdecimal()))
@FAST
def test_page_size_that_is_no_count_is_refused(n):
    with pytest.raises(InvalidPageSize):
        page_tags(["latest"], n, None)


ranges = st.one_of(
    st.builds(
        "bytes={}-{}".format,
        st.integers(0, 2 * len(BLOB)).map(str) | st.just(""),
        st.integers(0, 2 * len(BLOB)).map(str) | st.just(""),
    ),
    st.builds("bytes=-{}".format, st.integers(0, 2 * len(BLOB))),
    st.lists(st.builds("{}-{}".format, st.integers(0, 99), st.integers(100, 2 * len(BLOB))),
             min_size=2, max_size=4).map(lambda specs: "bytes=" + ",".join(specs)),
    st.builds("items={}-{}".format, st.integers(0, 99), st.integers(0, 99)),
    ascii_text,
)  # fmt: skip
_ONE_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_SUFFIX = re.compile(r"bytes=-(\d+)")


_TAG = f'"{sha256_digest(BLOB).removeprefix("sha256:")}"'
# If-Range values: only the blob's own strong entity tag lets the range through.
if_ranges = st.sampled_from(
    [None, _TAG, "W/" + _TAG, '"another"', "Sat, 05 Dec 2026 09:00:00 GMT", "garbage"]
)


@FAST
@given(range_header=ranges, method=st.sampled_from(["GET", "HEAD"]), if_range=if_ranges)
def test_any_range_is_served_as_rfc_9110_reads_it(app, range_header, method, if_range):
    """One range is served (a suffix longer than the blob is all of it); a first byte past
    the end is a 416; anything else (unparsable, another unit, several ranges) is ignored,
    and so is any range under an If-Range that is not the blob's strong entity tag."""
    headers = {"Range": range_header, **({"If-Range": if_range} if if_range else {})}
    response = app.open(f"/v2/hello/blobs/{sha256_digest(BLOB)}", method=method, headers=headers)
    check(response, method)
    if method == "HEAD":  # no range handling is defined for it (RFC 9110 section 14.2)
        assert response.status_code == 200
        return
    if if_range not in (None, _TAG):
        assert response.status_code == 200 and response.get_data() == BLOB
        return
    assert response.status_code in (200, 206, 416)
    one, suffix = _ONE_RANGE.fullmatch(range_header), _SUFFIX.fullmatch(range_header)
    if response.status_code == 416:
        assert response.headers["Content-Range"] == f"bytes */{len(BLOB)}"
        assert one and int(one[1]) >= len(BLOB), "only a first byte past the end is refused"
    elif response.status_code == 206:
        unit, _, spec = response.headers["Content-Range"].partition(" ")
        span, _, total = spec.partition("/")
        start, end = (int(x) for x in span.split("-"))
        assert unit == "bytes" and int(total) == len(BLOB)
        assert response.get_data() == BLOB[start : end + 1]
        if suffix:
            assert (start, end) == (max(0, len(BLOB) - int(suffix[1])), len(BLOB) - 1)
    else:
        satisfiable = one and int(one[1]) < len(BLOB) and int(one[1]) <= int(one[2] or 1e9)
        assert not satisfiable, "a satisfiable single range is served"
        assert not (suffix and int(suffix[1]) > 0), "a suffix is served"
        assert response.get_data() == BLOB


# Accept negotiation against a real, built image


def wants_oci(lines: list[str]) -> bool:
    """The spec's preference, modelled independently: OCI whenever an item names it without
    refusing it (q=0)."""
    for line in lines:
        for item in line.split(","):
            media, *item_params = (part.strip().lower() for part in item.split(";"))
            refused = any(p.replace(" ", "") in ("q=0", "q=0.0") for p in item_params)
            if media == OCI and not refused:
                return True
    return False


@pytest.fixture(scope="module")
def built(registry):
    assert registry.get("/v2/shell/hello/manifests/latest").status_code == 200
    return registry


@pytest.mark.e2e
@FAST
@given(accept=accept_lines, other=accept_lines)
def test_any_accept_gets_oci_or_schema2_and_a_digest_serves_the_same_bytes(built, accept, other):
    path = "/v2/shell/hello/manifests/latest"
    status, headers, body = raw(built, "GET", path, [("Accept", line) for line in accept])
    assert status == 200
    assert headers["Content-Type"] == json.loads(body)["mediaType"]
    assert headers["Content-Type"] == (OCI if wants_oci(accept) else DOCKER)
    digest = headers["Docker-Content-Digest"]
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    by_digest = f"/v2/shell/hello/manifests/{digest}"
    status, again_headers, again = raw(built, "GET", by_digest, [("Accept", x) for x in other])
    assert status == 200 and again == body
    assert again_headers["Content-Type"] == headers["Content-Type"]
