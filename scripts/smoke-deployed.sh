#!/usr/bin/env bash
# Checks a deployed registry end to end: pulls shell/hello with skopeo (which checks every
# blob against its digest), checks the digests again itself, and checks that the manifest
# pulled by digest is the one the tag named. Needs skopeo (apt-get install skopeo).
#
#   scripts/smoke-deployed.sh HOST        e.g. nixery-registry-abc123-uc.a.run.app
#
# SMOKE_TLS_VERIFY=false for a registry on plain HTTP (the tests run it on a local one).
set -euo pipefail
host=${1:?usage: smoke-deployed.sh HOST}
image=${SMOKE_IMAGE:-shell/hello}
tls=${SMOKE_TLS_VERIFY:-true}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

echo "smoke: pulling $host/$image (a first build takes minutes)"
digest=$(skopeo inspect --tls-verify="$tls" --format '{{.Digest}}' "docker://$host/$image")
skopeo copy -q --src-tls-verify="$tls" "docker://$host/$image" "oci:$dir/image:latest"
skopeo copy -q --src-tls-verify="$tls" "docker://$host/$image@$digest" "oci:$dir/bydigest:latest"
for blob in "$dir"/image/blobs/sha256/*; do
  [[ "$(sha256sum "$blob" | cut -d' ' -f1)" == "$(basename "$blob")" ]] || {
    echo "smoke: FAILED: blob $(basename "$blob") does not match its digest" >&2
    exit 1
  }
done
layers=$(find "$dir/image/blobs/sha256" -type f | wc -l)
cmp -s <(sort <(ls "$dir/image/blobs/sha256")) <(sort <(ls "$dir/bydigest/blobs/sha256"))
echo "smoke: ok: $host/$image is $digest ($layers blobs, each matching its digest)"
