import hashlib
import json

import pytest

from nixery.errors import InvalidDigest, InvalidName, InvalidTag
from nixery.job import FORMAT_VERSION, BuildJob, image_key
from nixery.records import Revision
from nixery.request import AMD64, ARM64, Tag, parse_digest, parse_name, parse_reference

R = Revision("path:/x", "r")


def test_packages_are_sorted_deduplicated_and_always_include_the_basics():
    request = parse_name("htop/git/htop")
    assert request.packages == ("cacert", "git", "htop", "iana-etc")
    assert request.arch == AMD64


def test_order_does_not_matter():
    assert parse_name("hello/shell") == parse_name("shell/hello")
    assert image_key(parse_name("hello/shell"), R) == image_key(parse_name("shell/hello"), R)


def test_meta_packages_anywhere():
    request = parse_name("hello/arm64/shell")
    assert request.arch == ARM64
    assert {"bashInteractive", "coreutils", "moreutils", "nano"} <= set(request.packages)
    assert "shell" not in request.packages and "arm64" not in request.packages


def test_nonroot_anywhere_and_in_the_key_only_when_asked():
    request = parse_name("hello/nonroot/shell")
    assert request.nonroot and "nonroot" not in request.packages
    assert not parse_name("shell/hello").nonroot
    assert request.packages == parse_name("shell/hello").packages
    assert image_key(request, R) != image_key(parse_name("shell/hello"), R)
    job = BuildJob.of(request, R)
    assert BuildJob.from_dict(job.to_dict()) == job
    with pytest.raises(ValueError):
        BuildJob.from_dict({**job.to_dict(), "nonroot": "yes"})


def test_keys_without_new_options_keep_their_shape():
    """`nonroot` and platforms enter a key only when asked for."""
    content = {"format": FORMAT_VERSION, "revision": str(R),
               "packages": parse_name("hello").packages, "system": "x86_64-linux"}  # fmt: skip
    old = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    assert image_key(parse_name("hello"), R) == old


def test_what_only_the_rules_add_is_optional_what_the_name_lists_is_not():
    """A flake may lack what every image holds and the shell's packages: the image goes
    without. Listed by the name, they are asked for, and the key says so (only then)."""
    shell = parse_name("shell/hello")
    assert shell.optional == ("bashInteractive", "cacert", "coreutils", "iana-etc", "moreutils",
                              "nano")  # fmt: skip
    listed = parse_name("cacert/shell/coreutils/hello")
    assert listed.packages == shell.packages
    assert listed.asked == ("cacert", "coreutils")
    assert "cacert" not in listed.optional and "coreutils" not in listed.optional
    assert image_key(listed, R) != image_key(shell, R)
    job = BuildJob.of(listed, R)
    assert BuildJob.from_dict(job.to_dict()) == job
    with pytest.raises(ValueError, match="key"):
        BuildJob.from_dict({**job.to_dict(), "asked": []})


# Keys computed on main before environments (commit 16aa580), for Revision("path:/x", "r").
KEYS_BEFORE = {
    "hello": "9a91c54fadfdb979e1a36c6c0fa7584261bd18de5b262315da873d314fc9cda0",
    "shell/jq": "c5be90389a8e8efd9e600df4f7a23da7a447315542e71eba1a3b12f1cdf13ff4",
    "nonroot/python3": "6535b092591f2ba73a430f340ae36346568ff13dfd08b51b3c9fcbfec733ff12",
    "python3packages.requests": "3bc97ecfab37f5397dc3c1503ddd1aedbbafe82a688a7bead1fa41927671bb82",
}


def test_only_names_of_nested_sets_changed_key_with_environments():
    """A nested set's package may now join its interpreter's environment: only such names
    got a new format, and with it a new key; every other image kept its key."""
    for name, before in KEYS_BEFORE.items():
        changed = image_key(parse_name(name), R) != before
        assert changed == ("." in name), name


def test_architecture_is_part_of_the_key():
    assert image_key(parse_name("hello"), R) != image_key(parse_name("arm64/hello"), R)


def test_revision_is_part_of_the_key():
    other = Revision("path:/x", "s")
    assert image_key(parse_name("hello"), R) != image_key(parse_name("hello"), other)


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
    with pytest.raises(InvalidName):
        parse_name(name)


def test_too_many_packages():
    with pytest.raises(InvalidName):
        parse_name("/".join(f"p{i}" for i in range(70)))


def test_tags_and_digests():
    assert parse_reference("latest") == Tag("latest")
    assert parse_reference("v1.2_3-rc") == Tag("v1.2_3-rc")
    with pytest.raises(InvalidTag):
        parse_reference("-bad")
    digest = "sha256:" + "a" * 64
    assert parse_reference(digest) == parse_digest(digest) == digest
    for bad in ["sha256:totallywrong", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "md5:x"]:
        with pytest.raises(InvalidDigest):
            parse_reference(bad)


def test_jobs_round_trip_and_refuse_forgeries():
    job = BuildJob.of(parse_name("shell/hello"), R)
    assert BuildJob.from_dict(job.to_dict()) == job
    forged = {**job.to_dict(), "packages": ["evil"]}
    for bad in (forged, {}, [], {**job.to_dict(), "system": "mips-linux"}, None):
        with pytest.raises(ValueError):
            BuildJob.from_dict(bad)


def test_several_platforms_unless_the_name_says_arm64():
    both = (AMD64, ARM64)
    request = parse_name("hello", platforms=both)
    assert (request.arch, request.platforms) == (AMD64, both)
    assert parse_name("hello", platforms=(ARM64,)) == parse_name("arm64/hello")
    forced = parse_name("arm64/hello", platforms=both)
    assert (forced.arch, forced.platforms) == (ARM64, ())
    assert image_key(request, R) != image_key(parse_name("hello"), R)
    job = BuildJob.of(request, R)
    assert BuildJob.from_dict(job.to_dict()) == job
    for bad in (["x86_64-linux"], ["aarch64-linux", "x86_64-linux"], ["x86_64-linux", "mips"]):
        with pytest.raises(ValueError):
            BuildJob.from_dict({**job.to_dict(), "platforms": bad})
