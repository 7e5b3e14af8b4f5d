#!/usr/bin/env bash
# Builds the builder service's image from functions/builder/Dockerfile, unchanged, with podman,
# on a machine that reaches no container registry: the Dockerfile's base image
# (debian:trixie-slim) is first made from Debian's archive with mmdebstrap, under that exact
# name. Container storage lives in var/containers (podman's settings come from the CONTAINERS_*
# files written there, so nothing under /var/lib/containers is touched); scripts/podman-env.sh
# prints them for other commands. Idempotent: the base image is made once.
#   scripts/build-builder-image.sh [TAG]      # default: localhost/nixery-builder:latest
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-localhost/nixery-builder:latest}"
base="docker.io/library/debian:trixie-slim"

# shellcheck source=scripts/podman-env.sh
source scripts/podman-env.sh

if ! podman image exists "$base"; then
  echo "build-builder-image: making $base from Debian's archive" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # What official slim images carry, so that apt keeps no caches in the image.
  printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
    'APT::Keep-Downloaded-Packages "false";' >"$work/docker-clean"
  mmdebstrap --variant=minbase --mode=root --quiet \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Languages "none"' \
    --customize-hook="upload $work/docker-clean /etc/apt/apt.conf.d/docker-clean" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    trixie "$work/rootfs.tar" "deb http://deb.debian.org/debian trixie main" \
    "deb http://deb.debian.org/debian trixie-updates main" \
    "deb http://deb.debian.org/debian-security trixie-security main"
  podman import --quiet --change 'CMD ["bash"]' "$work/rootfs.tar" "$base" >/dev/null
fi

# pip inside the build needs the CA bundle this machine trusts; it is mounted, not baked in.
pipconf=$(mktemp -d)
cp /etc/ssl/certs/ca-certificates.crt "$pipconf/ca.crt"
printf '[global]\ncert = /etc/xdg/pip/ca.crt\n' >"$pipconf/pip.conf"
started=$(date +%s)
podman build --quiet --layers=false --network host -v "$pipconf:/etc/xdg/pip:ro" \
  -f functions/builder/Dockerfile -t "$tag" . >/dev/null
rm -rf "$pipconf"
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "build-builder-image: $tag built in $(($(date +%s) - started)) s, $((size / 1000000)) MB" >&2
