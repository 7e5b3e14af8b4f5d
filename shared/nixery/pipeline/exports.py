"""Exports: a published image written to one file, for runtimes that load rather than pull.

``nixery build`` serves no registry: it builds an image through the same pipeline and
writes what a registry would serve for its name, byte for byte (the same manifest, config and
layer blobs, so the same digests), as an OCI image layout archive or as a docker-archive
(``docker save``'s format). Both load with ``podman load`` and ``docker load``. The archives
are reproducible: entries in a fixed order, with fixed times and owners.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from typing import BinaryIO

from nixery.oci.manifests import Manifest, canonical_json

FORMATS = ("oci", "docker-archive")
# The annotation an OCI layout names an image by, and skopeo's and podman's reading of it.
REF_NAME = "org.opencontainers.image.ref.name"


def _add(tar: tarfile.TarFile, name: str, data: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    tar.addfile(info, data)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _add(tar, name, io.BytesIO(data), len(data))


def _directory(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def write_archive(
    out: BinaryIO,
    kind: str,
    manifest: Manifest,
    reference: str,
    open_blob: Callable[[str], BinaryIO],
    blob_size: Callable[[str], int],
    children: Sequence[Manifest] = (),
) -> None:
    """Writes the image of ``manifest`` to ``out`` as ``kind`` (one of ``FORMATS``), named
    ``reference`` (``NAME:TAG``). ``open_blob`` and ``blob_size`` read the blob store. An
    OCI archive may hold an index, whose manifests are ``children``: a runtime that loads
    it takes its own platform's image."""
    if kind not in FORMATS or (kind != "oci" and children):
        raise ValueError(f"unknown archive format {kind!r}: one of {', '.join(FORMATS)}")
    blobs = list(dict.fromkeys(d for m in (children or [manifest]) for d in m.blobs()))
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def copy(name: str, digest: str) -> None:
            with open_blob(digest) as blob:
                _add(tar, name, blob, blob_size(digest))

        if kind == "oci":
            descriptor = {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": len(manifest.body),
                "annotations": {REF_NAME: reference},
            }
            index = {"schemaVersion": 2, "manifests": [descriptor]}
            _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", canonical_json(index))
            _directory(tar, "blobs")
            _directory(tar, "blobs/sha256")
            for m in dict.fromkeys([manifest, *children]):
                _add_bytes(tar, f"blobs/sha256/{_hex(m.digest)}", m.body)
            for digest in blobs:
                copy(f"blobs/sha256/{_hex(digest)}", digest)
        else:
            config_digest, *layers = manifest.blobs()
            # Layers stay gzipped: docker and podman load compressed layers and check them
            # against the config's diff_ids, so the image ID is the registry's config digest.
            config_file = f"{_hex(config_digest)}.json"
            entry = {
                "Config": config_file,
                "RepoTags": [reference],
                "Layers": [f"{_hex(d)}.tar.gz" for d in layers],
            }
            _add_bytes(tar, "manifest.json", canonical_json([entry]))
            copy(config_file, config_digest)
            for digest in dict.fromkeys(layers):
                copy(f"{_hex(digest)}.tar.gz", digest)


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")
