"""What every SBOM of ours must be: valid CycloneDX 1.6."""

from __future__ import annotations

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def assert_valid_cyclonedx(sbom: bytes) -> None:
    """Valid against CycloneDX 1.6's JSON schema, strictly (no unknown fields)."""
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode())
    assert errors is None, errors
