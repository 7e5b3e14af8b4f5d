"""The referrers API (OCI distribution spec 1.1): the artifacts about a manifest, as an index.

An image's SBOM (and signature) are artifacts whose ``subject`` is one of the image's
manifests; they are published with the image, so the list of a manifest's referrers never
changes once the image is visible. A digest nothing refers to gets an empty index, never a
404: clients read a 404 as "this registry has no referrers API" and fall back to tags.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from nixery.oci.manifests import OCI_INDEX, Manifest, canonical_json


def referrers_index(referrers: Iterable[Manifest], artifact_type: str | None = None) -> bytes:
    """The index of ``referrers``, only those of ``artifact_type`` when one is given; sorted
    by digest, so the same referrers always give the same bytes."""
    descriptors = []
    for manifest in sorted(referrers, key=lambda m: m.digest):
        body = json.loads(manifest.body)
        # The spec's rule: an artifact without artifactType is typed by its config.
        kind = body.get("artifactType") or body["config"]["mediaType"]
        if artifact_type and kind != artifact_type:
            continue
        descriptor = {
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": len(manifest.body),
            "artifactType": kind,
        }
        if body.get("annotations"):
            descriptor["annotations"] = body["annotations"]
        descriptors.append(descriptor)
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
