"""The documentation names files and modules that exist, so that a move cannot leave it
pointing at nothing (as the README's module table did before the docs were split)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PATH = re.compile(r"\b(?:tests|bench|scripts|shared/nixery|terraform|functions)/[\w./-]*\w")
MODULE = re.compile(r"\bnixery(?:\.[a-z_]+)+")
LINK = re.compile(r"\]\(([^)#:]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_a_page_names_exists(page: Path) -> None:
    text = page.read_text()
    missing = [p for p in PATH.findall(text) if not (REPO / p).exists()]
    missing += [p for p in LINK.findall(text) if not (page.parent / p).exists()]
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_a_page_names_exists(page: Path) -> None:
    missing = [
        name
        for name in set(MODULE.findall(page.read_text())) - {"nixery.dev", "nixery.example.org"}
        if not (resolves(name) or resolves(name.rpartition(".")[0]))
    ]
    assert missing == []


def resolves(module: str) -> bool:
    """Whether a module of that name exists (a page may name an attribute of one, as
    ``nixery.pipeline.layers.plan_layers``)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent is a module, not a package
        return False
