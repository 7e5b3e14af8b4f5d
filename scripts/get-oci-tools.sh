#!/usr/bin/env bash
# oras 1.2 and cosign 2.5, which the SBOM and signature tests pull with, into var/oci-tools/bin.
# Debian 12 has neither; Debian 13's packages are static Go binaries that run here. They are
# downloaded through an apt state of their own (the host's apt sources, lists and installed
# packages are left alone) and unpacked with dpkg -x, not installed. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=var/oci-tools
if [[ -x $dest/bin/oras && -x $dest/bin/cosign ]]; then
  exit 0
fi
apt_dir=$(mktemp -d)
trap 'rm -rf "$apt_dir"' EXIT
mkdir -p "$apt_dir"/lists/partial "$apt_dir"/cache/archives/partial "$apt_dir"/prefs
cat >"$apt_dir"/trixie.sources <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
cat >"$apt_dir"/apt.conf <<CONF
Dir::State::Lists "$apt_dir/lists"; Dir::State::status "/dev/null";
Dir::Cache "$apt_dir/cache"; Dir::Etc::sourcelist "$apt_dir/trixie.sources";
Dir::Etc::sourceparts "-"; Dir::Etc::preferencesparts "$apt_dir/prefs";
APT::Architectures { "amd64"; };
CONF
export APT_CONFIG=$apt_dir/apt.conf
apt-get update -q
(cd "$apt_dir" && apt-get download -q oras cosign)
for deb in "$apt_dir"/*.deb; do dpkg -x "$deb" "$apt_dir"/x; done
mkdir -p "$dest"/bin
install -m 755 "$apt_dir"/x/usr/bin/oras "$apt_dir"/x/usr/bin/cosign "$dest"/bin/
echo "setup: oras and cosign in $dest/bin"
