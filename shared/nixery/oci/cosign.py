"""cosign's signature format, the read side: which tags and manifests are signatures.

The registry needs only this much to answer a signature's tag and to tell a signature from
an SBOM among an image's referrers; making signatures (and the cryptography it takes) is the
pipeline's (``nixery.pipeline.signing``).
"""

from __future__ import annotations

import json
import re

from nixery.oci.manifests import Manifest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"


# The tag cosign reads a manifest's signatures from.
SIGNATURE_TAG = re.compile(r"sha256-(?P<hex>[0-9a-f]{64})\.sig")


def signed_digest(tag: str) -> str | None:
    """The digest whose signature a tag names (``sha256-<hex>.sig``), if it is such a tag."""
    match = SIGNATURE_TAG.fullmatch(tag)
    return f"sha256:{match['hex']}" if match else None


def is_signature(manifest: Manifest) -> bool:
    return bool(json.loads(manifest.body).get("artifactType") == SIMPLE_SIGNING)
