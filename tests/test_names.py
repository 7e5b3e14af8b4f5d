import pytest

from nixery.errors import DigestInvalid, ManifestUnknown, NameInvalid
from nixery.names import AMD64, ARM64, check_digest, check_tag, parse_name


def test_packages_are_sorted_deduplicated_and_always_include_the_basics():
    request = parse_name("htop/git/htop")
    assert request.packages == ("cacert", "git", "htop", "iana-etc")
    assert request.arch == AMD64


def test_order_does_not_matter():
    assert parse_name("hello/shell") == parse_name("shell/hello")
    assert parse_name("hello/shell").key("r") == parse_name("shell/hello").key("r")


def test_meta_packages_anywhere():
    request = parse_name("hello/arm64/shell")
    assert request.arch == ARM64
    assert {"bashInteractive", "coreutils", "moreutils", "nano"} <= set(request.packages)
    assert "shell" not in request.packages and "arm64" not in request.packages


def test_architecture_is_part_of_the_key():
    assert parse_name("hello").key("r") != parse_name("arm64/hello").key("r")


def test_revision_is_part_of_the_key():
    assert parse_name("hello").key("a") != parse_name("hello").key("b")


def test_dotted_paths_and_leading_digits():
    request = parse_name("python3packages.requests/1password/foo.2bar")
    assert "python3packages.requests" in request.packages
    assert "_1password" in request.packages
    assert "foo._2bar" in request.packages


@pytest.mark.parametrize(
    "name",
    ["", "Hello", "hello/", "/hello", "a//b", "a..b", "-a", "a-", "a b", "a/../b", "x" * 256],
)
def test_invalid_names(name):
    with pytest.raises(NameInvalid):
        parse_name(name)


def test_too_many_packages():
    with pytest.raises(NameInvalid):
        parse_name("/".join(f"p{i}" for i in range(70)))


def test_tags_and_digests():
    check_tag("latest")
    check_tag("v1.2_3-rc")
    with pytest.raises(ManifestUnknown):
        check_tag("-bad")
    check_digest("sha256:" + "a" * 64)
    for bad in ["sha256:totallywrong", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "md5:x"]:
        with pytest.raises(DigestInvalid):
            check_digest(bad)
