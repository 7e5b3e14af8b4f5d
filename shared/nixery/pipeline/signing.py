"""Signatures: each image manifest signed as cosign signs, so ``cosign verify --key`` accepts it.

cosign's format without a transparency log: the payload is a "simple signing" JSON document
naming the manifest's digest; it is one layer of a manifest whose layer annotation holds the
base64 signature of the payload, and cosign finds that manifest under the tag
``sha256-<hex of the signed digest>.sig`` of the image's repository. Both manifests of an
image (OCI and Docker schema2) are signed, since a client verifies the digest it pulled.

The signature manifest also names its image as ``subject``, so it is stored and found as the
SBOM is (published with the image, never before it, and listed by the referrers API); cosign
ignores the field. Signing is the only step that is not reproducible (ECDSA signatures are
randomised): the image, its SBOM and their digests are the same with and without a key.

Keys: a PEM private key (ECDSA P-256 or RSA, unencrypted) for ``PemSigner``; on Google Cloud
a Cloud KMS asymmetric key signs through its API (``gcp.kms_signer``) and is never exported.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from nixery.errors import ConfigError
from nixery.oci.cosign import SIGNATURE_ANNOTATION, SIMPLE_SIGNING
from nixery.oci.manifests import OCI_CONFIG, OCI_MANIFEST, Manifest, canonical_json, sha256_digest
from nixery.ports import Signer


class PemSigner:
    """Signs with a private key held by this process (NIXERY_SIGNING_KEY)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self._key = key

    @classmethod
    def load(cls, path: Path) -> PemSigner:
        """The key in a PEM file; refused at start when unreadable or of another kind."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"NIXERY_SIGNING_KEY: cannot load {path}: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError("NIXERY_SIGNING_KEY must be an ECDSA or RSA private key")
        return cls(key)

    def sign(self, payload: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(payload, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(payload, padding.PKCS1v15(), hashes.SHA256())


@dataclass(frozen=True)
class Signature:
    """A signature manifest and the blobs it names, to be stored before it is published."""

    manifest: Manifest
    blobs: tuple[bytes, ...]


def signature_for(image: Manifest, signer: Signer) -> Signature:
    """The cosign signature of ``image``."""
    payload = canonical_json(
        {
            "critical": {
                # cosign checks the digest; the name is any under which the image is pulled.
                "identity": {"docker-reference": ""},
                "image": {"docker-manifest-digest": image.digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    )
    signature = base64.b64encode(signer.sign(payload)).decode()
    # A config as cosign writes one: its only "layer" is the payload.
    config = canonical_json(
        {
            "architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(payload)]},
        }
    )  # fmt: skip
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIMPLE_SIGNING,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                "digest": sha256_digest(payload),
                "size": len(payload),
                "annotations": {SIGNATURE_ANNOTATION: signature},
            }
        ],
        "subject": {"mediaType": image.media_type, "digest": image.digest, "size": len(image.body)},
    }
    return Signature(Manifest(OCI_MANIFEST, canonical_json(body)), (payload, config))
