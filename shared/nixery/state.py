"""Registry state: published images, manifests, failed builds and the layer cache.

The state store is the authority on what exists: a manifest is visible only once every blob
it references is stored, and an image only once its manifests are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .archives import LayerBlob
from .manifests import Manifest


@dataclass(frozen=True)
class Failure:
    """A finished build that produced no image, remembered so it is not retried every pull."""

    status: int  # 404 for unknown packages, 500 for build errors
    message: str
    detail: dict[str, object]
    at: float  # time.time() when it failed


class State(Protocol):
    def image(self, key: str) -> dict[str, str] | None:
        """The published image for a key: manifest media type -> digest."""

    def manifest(self, digest: str) -> Manifest | None: ...

    def publish(self, key: str, manifests: list[Manifest]) -> None:
        """Stores the manifests and makes the image visible, atomically; clears any failure."""

    def failure(self, key: str) -> Failure | None: ...

    def record_failure(self, key: str, failure: Failure) -> None: ...

    def layer(self, layer_key: str) -> LayerBlob | None:
        """A layer archived before for the same store-path set (and archive format)."""

    def record_layer(self, layer_key: str, layer: LayerBlob) -> None: ...
