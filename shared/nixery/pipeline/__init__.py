"""The build pipeline, following the data: Nix's closure -> layers -> archives -> blobs ->
manifests (with SBOM and signatures) -> published. The registry never imports it; in Google
Cloud mode only the builder service does."""
