"""Pure formats of the OCI image and distribution specs: manifests, indexes, artifacts and
their referrers, and cosign's signature format (its read side)."""
