#!/usr/bin/env bash
# Sets up and starts a local registry on 127.0.0.1:8080 serving the offline demo package set.
# Any `nixery serve` flag may follow, e.g. --port 5000 or --pkgs-repo file:///path/to/repo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export STORAGE_PATH="${STORAGE_PATH:-$PWD/var/storage}"
if [[ -z "${NIXERY_PKGS_REPO:-}${NIXERY_CHANNEL:-}${NIXERY_PKGS_PATH:-}" ]]; then
  export NIXERY_PKGS_PATH="$PWD/examples/demo-pkgs"
  # The host files the demo set imports (examples/demo-pkgs/README.md).
  export NIXERY_EVAL_ALLOW="${NIXERY_EVAL_ALLOW:-/usr/bin:/usr/local/bin:/bin:/etc/ssl/certs/ca-certificates.crt:/etc/services:/etc/protocols}"
  # No binary cache holds the demo set: do not ask one on every build.
  export NIX_CONFIG="${NIX_CONFIG:-}"$'\nsubstituters ='
fi
exec .venv/bin/nixery serve "$@"
