"""Manifests: the image config and the OCI and Docker schema2 manifests that point at it.

Both formats are produced for every image and stored under their own digests; a request
gets the one its Accept headers prefer. JSON is serialised canonically (sorted keys, no
spaces) so the same layers always give the same bytes and therefore the same digests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nixery.request import Architecture

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# An artifact's config (OCI image spec 1.1): the empty JSON object, a blob of its own.
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

_FORMATS = {
    OCI_MANIFEST: (OCI_CONFIG, OCI_LAYER),
    DOCKER_MANIFEST: (DOCKER_CONFIG, DOCKER_LAYER),
}
# Fixed, so that configs are reproducible; the same choice as nixpkgs' dockerTools.
CREATED = "1970-01-01T00:00:01Z"


@dataclass(frozen=True)
class LayerBlob:
    """A layer as the manifest and config name it (written by ``pipeline.archives``)."""

    digest: str  # sha256 of the gzip blob
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # bytes of the gzip blob


@dataclass(frozen=True)
class Manifest:
    media_type: str
    body: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.body)

    def blobs(self) -> list[str]:
        """The digests of the blobs the manifest names: its config, then its layers (none for
        an index, which names manifests)."""
        body = json.loads(self.body)
        if "config" not in body:
            return []
        return [body["config"]["digest"], *(layer["digest"] for layer in body["layers"])]

    @property
    def subject(self) -> str | None:
        """The digest of the manifest this one refers to, for an artifact (an SBOM)."""
        subject = json.loads(self.body).get("subject")
        return str(subject["digest"]) if subject else None

    def children(self) -> list[str]:
        """The digests of the manifests an index names (none for an image manifest)."""
        return [m["digest"] for m in json.loads(self.body).get("manifests", [])]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def provenance(title: str, source: str, revision: str, url: str | None = None) -> dict[str, str]:
    """The image spec's pre-defined annotations that say where an image comes from: its
    packages, the package set and its exact revision. ``created`` is fixed, as in the config,
    so that they take nothing from reproducibility. A package set with no address to give
    (a path source's directory is the server's business) has no ``source``: its revision,
    a content hash, names it."""
    return {
        "org.opencontainers.image.created": CREATED,
        "org.opencontainers.image.revision": revision,
        **({"org.opencontainers.image.source": source} if source else {}),
        "org.opencontainers.image.title": title,
        **({"org.opencontainers.image.url": url} if url else {}),
    }


def image_config(
    arch: str,
    layers: Sequence[LayerBlob],
    config: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """``config`` is the runtime part (``pipeline.runtime``); ``labels`` are the
    provenance annotations, which a config carries as labels (the image spec's pre-defined
    annotation keys may be used there)."""
    if labels:
        config = {**config, "Labels": dict(labels)}
    return canonical_json(
        {
            "architecture": arch,
            "os": "linux",
            "created": CREATED,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        }
    )


def image_manifests(
    config: bytes, layers: Sequence[LayerBlob], annotations: Mapping[str, str] | None = None
) -> list[Manifest]:
    """The same image in each manifest format; ``annotations`` go on the OCI manifest
    (Docker schema2 has no place for them)."""
    manifests = []
    for media_type, (config_type, layer_type) in _FORMATS.items():
        body = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": config_type,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": layer_type, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
        if annotations and media_type == OCI_MANIFEST:
            body["annotations"] = dict(annotations)
        manifests.append(Manifest(media_type, canonical_json(body)))
    return manifests


def artifact_manifest(
    artifact_type: str,
    blob: bytes,
    filename: str,
    subject: Manifest,
    annotations: Mapping[str, str],
) -> Manifest:
    """An OCI artifact (image spec 1.1) holding one blob of ``artifact_type`` about
    ``subject``: what the referrers API lists for it. Its config is the empty blob; the
    blob's title annotation is the file name clients (``oras pull``) save it under."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": EMPTY_CONFIG,
            "digest": sha256_digest(EMPTY_BLOB),
            "size": len(EMPTY_BLOB),
        },
        "layers": [
            {
                "mediaType": artifact_type,
                "digest": sha256_digest(blob),
                "size": len(blob),
                "annotations": {"org.opencontainers.image.title": filename},
            }
        ],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": len(subject.body),
        },
        "annotations": dict(annotations),
    }
    return Manifest(OCI_MANIFEST, canonical_json(body))


def preferred_type(accept: Iterable[str]) -> str:
    """The manifest format to answer with, given every Accept header line of a request.

    OCI when the client names it; Docker schema2 otherwise, including for clients that send
    no Accept or only wildcards, since every Docker-era client reads schema2.
    """
    return OCI_MANIFEST if OCI_MANIFEST in _accepted(accept) else DOCKER_MANIFEST


def preferred_index_type(accept: Iterable[str]) -> str | None:
    """The index format a client names, if any: the one that goes with the manifest format
    it prefers when it names both. A client that names neither gets a single image."""
    accepted = _accepted(accept)
    pairs = {OCI_MANIFEST: OCI_INDEX, DOCKER_MANIFEST: DOCKER_LIST}
    preferred = pairs[preferred_type(accept)]
    if preferred in accepted:
        return preferred
    return next((t for t in (OCI_INDEX, DOCKER_LIST) if t in accepted), None)


def image_index(platforms: Sequence[tuple[Architecture, Sequence[Manifest]]]) -> list[Manifest]:
    """An OCI index of the platforms' OCI manifests and a Docker manifest list of their
    schema2 manifests, in the order given (NIXERY_PLATFORMS'): canonical, so reproducible."""
    indexes = []
    for index_type, manifest_type in ((OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)):
        entries = []
        for arch, manifests in platforms:
            [manifest] = [m for m in manifests if m.media_type == manifest_type]
            platform = {"architecture": arch.oci_arch, "os": "linux"}
            if arch.variant:
                platform["variant"] = arch.variant
            entries.append({"mediaType": manifest_type, "digest": manifest.digest,
                            "size": len(manifest.body), "platform": platform})  # fmt: skip
        body = {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
        indexes.append(Manifest(index_type, canonical_json(body)))
    return indexes


def _accepted(accept: Iterable[str]) -> set[str]:
    """The media types every Accept header line of a request names, but for those refused."""
    accepted = set()
    for line in accept:
        for item in line.split(","):
            media, *params = item.split(";")
            if not any(_refused(param) for param in params):
                accepted.add(media.strip().lower())
    return accepted


def _refused(param: str) -> bool:
    """True for ``q=0``: the client says it does NOT accept that type."""
    key, _, value = param.partition("=")
    if key.strip().lower() != "q":
        return False
    try:
        return float(value) <= 0
    except ValueError:
        return False
