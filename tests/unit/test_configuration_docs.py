"""The configuration page, the table of variables in the code, and what the code reads agree.

``nixery.config.VARIABLES`` is the one list of the environment variables the package reads.
A variable read in the package's source but missing from it, listed in it but read nowhere,
or listed in it but not in docs/configuration.md's tables (or the other way round) fails
here; ``Env`` refuses at run time to read a name missing from it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import nixery
from nixery.config import VARIABLES, Env

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(nixery.__file__).resolve().parent
PAGE = REPO / "docs" / "configuration.md"

# Nixery's own names, which carry no prefix; ours all start with NIXERY_.
NIXERY_NAMES = frozenset(
    {"NIX_TIMEOUT", "NIX_POPULARITY_URL", "STORAGE_PATH", "GCS_BUCKET", "GOOGLE_CLOUD_PROJECT",
     "PORT", "WEB_DIR"}
)  # fmt: skip
# A string literal that is a whole variable name of ours.
PREFIXED = re.compile(r"""(?<![\w])["'](NIXERY_[A-Z0-9_]+)["']""")
VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")
# config.Env's reads, and a mapping's.
ENV_METHODS = frozenset(
    {"get", "need", "integer", "size", "seconds", "words", "rate", "url", "directory"}
)
# What an environment is called where it is read: env (an Env or a mapping), os.environ.
ENV_NAMES = re.compile(r"_?env|environ", re.IGNORECASE)


def sources() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))
    yield from sorted((REPO / "functions").rglob("*.py"))


def _receiver(node: ast.expr) -> str | None:
    """The name an attribute is read from: ``env`` in ``env.get``, ``environ`` in
    ``os.environ.get``, ``Env`` in ``Env(...).get``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver(node.func)
    return None


def _is_environment(node: ast.expr) -> bool:
    name = _receiver(node)
    return name is not None and ENV_NAMES.fullmatch(name) is not None


def _constants_assigned(tree: ast.AST) -> dict[str, set[str]]:
    """name -> the string constants assigned to it anywhere in the module (for a read whose
    variable's name is chosen before it, as ``timeout_from`` in gcp/settings.py)."""
    assigned: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    assigned.setdefault(target.id, set()).add(node.value.value)
    return assigned


def _names(node: ast.expr, assigned: dict[str, set[str]]) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Name):
        return assigned.get(node.id, set())
    return set()


def _reads_its_first_argument(call: ast.Call) -> bool:
    """env.get("X"), env.need("X", ...), os.environ.get("X"), Env(...).integer("X", ...),
    os.getenv("X")."""
    if isinstance(call.func, ast.Attribute) and call.func.attr in ENV_METHODS:
        return _is_environment(call.func.value)
    return _receiver(call.func) == "getenv"


def reads_in(text: str) -> set[str]:
    """The environment variables one module reads."""
    found = set(PREFIXED.findall(text))
    found |= {name for name in re.findall(r"""["']([A-Z_]+)["']""", text) if name in NIXERY_NAMES}
    tree = ast.parse(text)
    assigned = _constants_assigned(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and _reads_its_first_argument(node):
            found |= _names(node.args[0], assigned)
        # os.environ["X"], not os.environ["X"] = ... (setting a child's environment)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _is_environment(node.value)
        ):
            found |= _names(node.slice, assigned)
        # "X" in os.environ
        elif (
            isinstance(node, ast.Compare)
            and len(node.ops) == 1
            and isinstance(node.ops[0], ast.In | ast.NotIn)
            and _is_environment(node.comparators[0])
        ):
            found |= _names(node.left, assigned)
    return {name for name in found if VARIABLE.fullmatch(name)}


def _without_the_table(path: Path, text: str) -> str:
    """config.py, less VARIABLES itself: listing a name there is not reading it."""
    if path != PACKAGE / "config.py":
        return text
    lines = text.splitlines(keepends=True)
    for node in ast.parse(text).body:
        if isinstance(node, ast.AnnAssign | ast.Assign) and "VARIABLES" in {
            t.id
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }:
            assert node.end_lineno is not None
            del lines[node.lineno - 1 : node.end_lineno]
            break
    return "".join(lines)


def package_reads() -> dict[str, list[str]]:
    """Each variable read in the package's source -> the files that read it."""
    reads: dict[str, list[str]] = {}
    for path in sources():
        for name in reads_in(_without_the_table(path, path.read_text())):
            reads.setdefault(name, []).append(str(path.relative_to(REPO)))
    return reads


def documented() -> list[str]:
    """The first column of every table of docs/configuration.md headed ``| variable |``."""
    names: list[str] = []
    in_table = False
    for line in PAGE.read_text().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == "variable":
            in_table = True
        elif in_table and not set(cells[0]) <= set("-: "):
            names += re.findall(r"`([^`]+)`", cells[0])
    return names


def test_every_variable_the_package_reads_is_in_the_table_of_variables() -> None:
    missing = {name: files for name, files in package_reads().items() if name not in VARIABLES}
    assert not missing, f"read but not in nixery.config.VARIABLES: {missing}"


def test_every_variable_in_the_table_is_read_somewhere_in_the_package() -> None:
    unread = sorted(set(VARIABLES) - set(package_reads()))
    assert not unread, f"in nixery.config.VARIABLES but read nowhere: {unread}"


def test_the_configuration_page_lists_exactly_the_variables_of_the_table() -> None:
    names = documented()
    assert names, f"no table headed '| variable |' in {PAGE}"
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not twice, f"listed more than once in docs/configuration.md: {twice}"
    undocumented = sorted(set(VARIABLES) - set(names))
    assert not undocumented, f"missing from docs/configuration.md: {undocumented}"
    unknown = sorted(set(names) - set(VARIABLES))
    assert not unknown, f"in docs/configuration.md but not in nixery.config.VARIABLES: {unknown}"


def test_each_variable_has_a_one_line_description() -> None:
    for name, description in VARIABLES.items():
        assert VARIABLE.fullmatch(name), name
        assert description.strip() and "\n" not in description, name


@pytest.mark.parametrize(
    "read",
    [
        lambda env: env.get("NIXERY_NOT_A_SETTING"),
        lambda env: env.need("NIXERY_NOT_A_SETTING", "here"),
        lambda env: env.integer("NIXERY_NOT_A_SETTING", 1, 0, 2),
        lambda env: env.seconds("NIXERY_NOT_A_SETTING", 1.0),
        lambda env: env.size("NIXERY_NOT_A_SETTING", None),
        lambda env: env.words("NIXERY_NOT_A_SETTING", r"\w+"),
        lambda env: env.rate("NIXERY_NOT_A_SETTING"),
        lambda env: env.url("NIXERY_NOT_A_SETTING", "https://example.org"),
        lambda env: env.directory("NIXERY_NOT_A_SETTING", Path("/"), "x"),
    ],
)
def test_env_refuses_to_read_a_variable_missing_from_the_table(read) -> None:
    env = Env({"NIXERY_NOT_A_SETTING": "1"})
    with pytest.raises(AssertionError, match=r"NIXERY_NOT_A_SETTING.*VARIABLES"):
        read(env)


def test_the_scan_sees_each_way_the_package_reads_a_variable() -> None:
    text = """
import os
FLAG = "NIXERY_A"
def f(env, environ):
    timeout_from = "CLOUD_B"
    env.seconds(timeout_from, 1.0)
    env.need("C_NEED", "why")
    Env(environ).integer("D_INT", 1, 0, 2)
    os.environ.get("E_GET")
    os.environ["F_ITEM"]
    env["GIT_SET"] = "1"
    env.setdefault("GIT_DEFAULT", "x")
    "G_IN" in os.environ
    os.getenv("H_GETENV")
    request.environ.get("waitress.client_disconnected")
    self._ls_remote("HEAD").get("HEAD")
    return PORT_LIKE, "PORT"
"""
    assert reads_in(text) == {
        "NIXERY_A", "CLOUD_B", "C_NEED", "D_INT", "E_GET", "F_ITEM", "G_IN", "H_GETENV", "PORT"
    }  # fmt: skip
