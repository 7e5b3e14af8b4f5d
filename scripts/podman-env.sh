#!/usr/bin/env bash
# Sourced (or run, to print the exports): podman and buildah settings for a container storage
# of our own, as root, on this kind of machine (vfs storage, cgroupfs, runc, host network),
# so that no command touches /var/lib/containers. The storage is the project's var/containers,
# or the directory NIXERY_CONTAINERS names (the tests' clients use a scratch one).
root="${NIXERY_CONTAINERS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/var/containers}"
mkdir -p "$root/tmp"
cat >"$root/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$root/graph"
runroot = "$root/run"
EOF
cat >"$root/containers.conf" <<EOF
[containers]
netns = "host"
cgroupns = "host"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$root/events.log"
runtime = "runc"
tmp_dir = "$root/tmp"
image_copy_tmp_dir = "$root/tmp"
EOF
: >"$root/registries.conf"
export CONTAINERS_STORAGE_CONF="$root/storage.conf"
export CONTAINERS_CONF="$root/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$root/registries.conf"
export TMPDIR="$root/tmp"
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  env | grep -E '^(CONTAINERS_|TMPDIR=)' | sed 's/^/export /'
fi
