"""The package's modules import each other without a cycle, every import statement counted
(those inside functions too), so that each layer can be read, and tested, below the next."""

from __future__ import annotations

import ast
from pathlib import Path

import nixery
from tests.helpers.boundary import building_modules

ROOT = Path(nixery.__file__).parent


def module_name(path: Path) -> str:
    parts = ["nixery", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{name}: relative import"
                # ``from package import module`` imports the module.
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the modules along it, if there is any."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if found := visit(target):
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if found := visit(node):
            return found
    return None


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    found = cycle(import_graph())
    assert found is None, "import cycle: " + " -> ".join(found or [])


def test_nothing_the_registry_function_imports_builds_images() -> None:
    """Every import statement reachable from the function's app, those that run only on some
    requests too; tests/e2e/test_function_imports.py checks what a real run loads."""
    graph, reached, todo = import_graph(), set(), ["nixery.gcp.registry_app"]
    while todo:
        if (module := todo.pop()) not in reached:
            reached.add(module)
            todo += graph[module]
    assert "nixery.http.protocol" in reached
    assert building_modules(reached) == []


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
