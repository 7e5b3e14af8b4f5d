"""The runtime rule: Cmd, Entrypoint, Env, User, on synthetic image roots."""

from nixery.pipeline.archives import Entry
from nixery.pipeline.runtime import runtime_config
from nixery.records import Environment
from nixery.request import parse_name


def root(*paths: str) -> list[Entry]:
    return [Entry(p, "symlink", target="/nix/store/x-" + p) for p in paths]


JQ = {"jq": "jq"}


def test_a_shell_runs_bash_and_nothing_else():
    config = runtime_config(parse_name("shell/jq"), root("bin/bash", "bin/jq"), JQ)
    assert config == {
        "Env": ["PATH=/bin:/sbin:/usr/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"],
        "Cmd": ["bash"],
    }


def test_one_package_with_a_main_program_is_the_entrypoint():
    config = runtime_config(parse_name("jq"), root("bin/jq"), JQ)
    assert config["Entrypoint"] == ["/bin/jq"] and "Cmd" not in config


def test_no_entrypoint_otherwise():
    assert "Entrypoint" not in runtime_config(parse_name("hello"), root("bin/hello"), {})
    two = runtime_config(parse_name("jq/hello"), root("bin/jq", "bin/hello"), JQ)
    assert "Entrypoint" not in two, "two packages: which one would be meant?"
    missing = runtime_config(parse_name("jq"), root("bin/other"), JQ)
    assert "Entrypoint" not in missing, "a program the image lacks"
    for program in ("../../bin/sh", "a b", "", "-rf"):
        config = runtime_config(parse_name("jq"), root("bin/jq", f"bin/{program}"), {"jq": program})
        assert "Entrypoint" not in config, program


def test_one_environment_counts_as_one_package():
    """A name made only of one interpreter's packages runs the environment's program."""
    members = ("python3", "python3packages.numpy", "python3packages.requests")
    env = Environment("python", "python3-3.11.5", "/nix/store/x-env", members, (), "python3")
    programs = {"python3": "python3"}  # each package's own; requests and numpy have none
    for name in ("python3/python3packages.requests/python3packages.numpy",
                 "python3packages.requests"):  # fmt: skip
        config = runtime_config(parse_name(name), root("bin/python3"), programs, [env])
        assert config["Entrypoint"] == ["/bin/python3"], name
    mixed = runtime_config(
        parse_name("hello/python3packages.requests"), root("bin/python3"), programs, [env]
    )
    assert "Entrypoint" not in mixed, "a package outside the environment: which one?"


def test_one_package_of_an_environment_with_its_own_program_runs_that():
    """``python3packages.black`` runs black, as it did before environments; beside another
    package of its set, the interpreter runs."""
    members = ("python3packages.black", "python3packages.requests")
    env = Environment("python", "python3-3.11.5", "/nix/store/x-env", members, (), "python3")
    programs = {"python3packages.black": "black", "python3packages.requests": None}
    image = root("bin/python3", "bin/black")
    black = runtime_config(parse_name("python3packages.black"), image, programs, [env])
    assert black["Entrypoint"] == ["/bin/black"]
    both = runtime_config(
        parse_name("python3packages.black/python3packages.requests"), image, programs, [env]
    )
    assert both["Entrypoint"] == ["/bin/python3"]


def test_locale_only_with_a_locale_archive():
    plain = runtime_config(parse_name("hello"), root("bin/hello"), {})
    assert not any(e.startswith(("LANG=", "LC_ALL=")) for e in plain["Env"])
    with_locale = runtime_config(
        parse_name("hello/glibclocales"), root("bin/hello", "lib/locale/locale-archive"), {}
    )
    assert {"LANG=C.UTF-8", "LC_ALL=C.UTF-8"} <= set(with_locale["Env"])
    assert with_locale["Env"][:2] == plain["Env"]


def test_nonroot_sets_user_and_working_dir():
    config = runtime_config(parse_name("nonroot/shell"), root("bin/bash"), {})
    assert (config["User"], config["WorkingDir"], config["Cmd"]) == (
        "1000:1000",
        "/home/nixery",
        ["bash"],
    )
    assert "User" not in runtime_config(parse_name("shell"), root("bin/bash"), {})
