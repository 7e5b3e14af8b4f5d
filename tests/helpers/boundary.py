"""Which of the package's modules build images: the registry function must load none of them.

By package prefix, so that a new module of the pipeline is covered without a list to keep.
"""

from __future__ import annotations

from collections.abc import Iterable

BUILDING = ("nixery.pipeline", "nixery.nix", "nixery.gcp.builder_app")


def building_modules(modules: Iterable[str]) -> list[str]:
    """The modules among ``modules`` that belong to building images, sorted."""
    return sorted(m for m in modules if any(m == b or m.startswith(b + ".") for b in BUILDING))
