"""Build jobs: one image to build, as the registry hands it to a builder.

A job is what crosses from the registry to the builder (a thread in local mode, a Cloud Task
on Google Cloud), so it lives apart from the pipeline: enqueuing one must not load Nix or the
archive code. Its key is the image's cache key, derived from its content alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nixery.records import Revision
from nixery.request import ImageRequest, architecture

# Bumped whenever a change to the pipeline changes what an image key produces, so that
# images published by an older version are rebuilt rather than served stale.
FORMAT_VERSION = 2  # 2: provenance annotations, an SBOM per image, the entrypoint rule
# The format of images whose names hold a nested set's package (``python3packages.requests``):
# a superset of the images that changed when such packages became their interpreter's
# environment, which only evaluating the package set tells, after the key is needed; every
# other image kept its key and its bytes.
ENVIRONMENTS_FORMAT = 3  # 3: a nested set's packages as their interpreter's environment


def nested(packages: tuple[str, ...]) -> bool:
    """Whether a name holds a package of a nested set, which may join an environment."""
    return any("." in p for p in packages)


def image_key(request: ImageRequest, revision: Revision) -> str:
    """The cache key of a request built from one exact source revision."""
    content: dict[str, Any] = {
        "format": ENVIRONMENTS_FORMAT if nested(request.packages) else FORMAT_VERSION,
        "revision": str(revision),
        "packages": request.packages,
        "system": request.arch.nix_system,
    }
    if request.nonroot:  # only then: the keys of images without it stay as they were
        content["nonroot"] = True
    if request.platforms:
        content["platforms"] = [a.nix_system for a in request.platforms]
    if request.asked:  # only then, as nonroot: a flake fails without these, goes without others
        content["asked"] = list(request.asked)
    material = json.dumps(content, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class BuildJob:
    """Everything a builder needs, and nothing it must look up."""

    key: str
    request: ImageRequest
    revision: Revision

    @classmethod
    def of(cls, request: ImageRequest, revision: Revision) -> BuildJob:
        return cls(image_key(request, revision), request, revision)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "packages": list(self.request.packages),
            "system": self.request.arch.nix_system,
            "nonroot": self.request.nonroot,
            "platforms": [a.nix_system for a in self.request.platforms],
            "asked": list(self.request.asked),
            "revision": {"source": self.revision.source, "value": self.revision.value},
        }

    @classmethod
    def from_dict(cls, data: object) -> BuildJob:
        """The job a task carries. Its key is recomputed, so a forged task cannot publish an
        image under a key other than its own content's; anything malformed is ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError("a job is a JSON object")
        try:
            system, packages, revision = data["system"], data["packages"], data["revision"]
            source, value = revision["source"], revision["value"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed job: missing {e}") from None
        systems = data.get("platforms", [])
        if not isinstance(systems, list) or len(systems) == 1:
            raise ValueError("platforms must be a list of none or several systems")
        arches = [architecture(s) if isinstance(s, str) else None for s in [system, *systems]]
        arch, *platforms = arches
        if arch is None or None in platforms:
            raise ValueError(f"unknown system in {[system, *systems]!r}"[:200])
        if platforms and platforms[0] != arch:
            raise ValueError("the system must be the first of the platforms")
        if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
            raise ValueError("packages must be a list of names")
        nonroot = data.get("nonroot", False)
        if not isinstance(nonroot, bool):
            raise ValueError("nonroot must be true or false")
        asked = data.get("asked", [])
        if not isinstance(asked, list) or not all(isinstance(p, str) for p in asked):
            raise ValueError("asked must be a list of names")
        request = ImageRequest(
            tuple(sorted(set(packages))),
            arch,
            nonroot,
            tuple(a for a in platforms if a),
            tuple(sorted(set(asked))),
        )
        job = cls.of(request, Revision(str(source), str(value)))
        if job.key != data.get("key"):
            raise ValueError("the job's key does not match its content")
        return job
