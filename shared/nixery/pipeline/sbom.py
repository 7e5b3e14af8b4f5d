"""The image's SBOM: CycloneDX 1.6 JSON, from the closure graph and the package set's meta.

Nix knows an image exactly: every store path of its closure, the hash of its contents (the
NAR hash) and what it references. Each store path is one component (its name and version,
its NAR hash as a SHA-256 checksum, the description, homepage and licenses the package set's
``meta`` gives it), the closure's references are the dependency graph, and the image itself
is the BOM's subject, with the package set's source and exact revision (and, for a flake,
what its lock pins). An interpreter's
environment (``python3.withPackages``) is a component like any store path, with properties
naming its interpreter and the image's packages it holds; those packages are components too
(the environment references them), of type ``application`` as every package the name asks
for is.

CycloneDX rather than SPDX because both Trivy (``trivy sbom``) and Grype read either, but
the referrers tooling around them (Trivy's referrer plugin, its ``--sbom-sources oci``) looks
for ``application/vnd.cyclonedx+json`` first; CycloneDX also has a dependency graph and
hashes per component without SPDX's document-level boilerplate. Written as plain JSON:
cyclonedx-python-lib pulls in four more libraries and gives every BOM a random serial
number and the time of day, both of which would have to be undone for byte-identical output.
Everything here is sorted and canonical, so the same image always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nixery.nix.path_info import PackageMeta, StorePath, nar_hash_hex, sri_of_hex
from nixery.oci.manifests import CREATED, canonical_json
from nixery.records import Environment, FlakeLock, Revision
from nixery.store_names import parse_store_name

SBOM_TYPE = "application/vnd.cyclonedx+json"
SPEC_VERSION = "1.6"
SBOM_FILE = "sbom.cdx.json"  # what `oras pull` saves it as
_IMAGE_REF = "image"


def image_sbom(
    *,
    title: str,
    revision: Revision,
    system: str,
    roots: Iterable[str],
    closure: Mapping[str, StorePath],
    meta: Mapping[str, PackageMeta],
    flake: FlakeLock | None = None,
    environments: Sequence[Environment] = (),
) -> bytes:
    """The SBOM of the image named ``title`` (its packages), whose packages' outputs are
    ``roots``, built from ``revision`` for ``system``; from a ``flake``, with the flake's NAR
    hash and each locked input's URL and NAR hash, which pin everything it was built from;
    ``environments`` are those it holds."""
    roots = sorted(set(roots))
    asked = set(roots).union(*(e.contents for e in environments))
    about = {e.path: e for e in environments}
    bom: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "timestamp": CREATED,
            "tools": {"components": [{"type": "application", "name": "nixery"}]},
            "component": {
                "type": "container",
                "bom-ref": _IMAGE_REF,
                "name": title,
                "version": revision.value,
                "properties": _properties(
                    ("nixery:package-set:source", revision.source),
                    ("nixery:package-set:revision", revision.value),
                    ("nixery:system", system),
                    *(_flake_properties(flake) if flake else ()),
                ),
            },
        },
        "components": [
            _component(closure[path], meta.get(path), path in asked, about.get(path))
            for path in sorted(closure)
        ],
        "dependencies": [
            {"ref": _IMAGE_REF, "dependsOn": roots},
            *({"ref": p, "dependsOn": list(closure[p].references)} for p in sorted(closure)),
        ],
    }
    # A serial number is required to tell BOMs apart; derived from the content, so that it
    # is the same for the same image.
    serial = uuid.uuid5(uuid.NAMESPACE_URL, hashlib.sha256(canonical_json(bom)).hexdigest())
    bom["serialNumber"] = serial.urn
    return canonical_json(bom)


def _component(
    path: StorePath, meta: PackageMeta | None, requested: bool, environment: Environment | None
) -> dict[str, Any]:
    name, version = (meta.pname, meta.version) if meta else parse_store_name(path.path)
    nar_hex = nar_hash_hex(path.nar_hash)
    properties = [
        ("nix:store-path", path.path),
        # One spelling whatever Nix printed, so that every Nix gives the same SBOM.
        ("nix:nar-hash", sri_of_hex(nar_hex)),
        ("nix:nar-size", str(path.nar_size)),
    ]
    if environment is not None:
        properties += [
            ("nixery:environment:interpreter", environment.interpreter),
            *(("nixery:environment:package", member) for member in environment.members),
        ]
    component: dict[str, Any] = {
        "type": "application" if requested else "library",
        "bom-ref": path.path,
        "name": name,
        "hashes": [{"alg": "SHA-256", "content": nar_hex}],
        "properties": _properties(*properties),
    }
    if version:
        component["version"] = version
    if meta and meta.description:
        component["description"] = meta.description
    if meta and meta.homepage:
        component["externalReferences"] = [{"type": "website", "url": meta.homepage}]
    if meta and meta.licenses:
        component["licenses"] = [{"license": {kind: value}} for kind, value in meta.licenses]
    return component


def _flake_properties(flake: FlakeLock) -> list[tuple[str, str]]:
    pairs = [("nixery:flake:nar-hash", flake.nar_hash)]
    for i in flake.inputs:
        pairs += [(f"nixery:flake:input:{i.name}:url", i.url)]
        if i.nar_hash:  # an input locked by its commit alone has none
            pairs += [(f"nixery:flake:input:{i.name}:nar-hash", i.nar_hash)]
    return pairs


def _properties(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]
