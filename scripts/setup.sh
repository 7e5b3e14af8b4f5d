#!/usr/bin/env bash
# Sets up a Debian 12 machine for Nixery: Nix (offline-capable), the demo set's bootstrap
# busybox, and a Python virtualenv in .venv. With --test, also the registry clients the tests
# pull with (skopeo, podman, containerd, runc), the test dependencies (qemu-user and chromium
# among them; oras and cosign from scripts/get-oci-tools.sh), and the tools the benchmarks
# compare against (pigz, wrk, docker-registry), since the tests run every benchmark in its
# smoke mode; with --bench, only those tools. Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nix-bin busybox-static git ca-certificates netbase python3 python3-venv)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(skopeo podman runc uidmap containerd default-jre-headless)
  packages+=(pigz wrk docker-registry)  # tests/test_bench.py: the benchmarks' smoke runs
  packages+=(mmdebstrap)  # scripts/build-builder-image.sh: the builder image's base, made locally
  packages+=(qemu-user)  # tests/test_archives_cpu.py: older CPUs, emulated
  packages+=(chromium)  # tests/test_pages.py: the web pages in a real browser, via Playwright
fi
if [[ "${1:-}" == "--bench" ]]; then  # bench/: the reference tools they compare against
  packages+=(skopeo pigz wrk docker-registry)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Builds run as root without the Nix daemon, so there are no build users.
if ! grep -qs '^build-users-group *= *$' /etc/nix/nix.conf; then
  mkdir -p /etc/nix
  echo 'build-users-group =' >>/etc/nix/nix.conf
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
extras=""
[[ "${1:-}" == "--test" ]] && extras="[gcp,test]"
.venv/bin/pip install -q --disable-pip-version-check -e "shared${extras}"

if [[ "${1:-}" == "--test" ]]; then
  # The Cloud Tasks emulator pins protobuf<5, so it gets a virtualenv of its own.
  if [[ ! -x .venv-tasks/bin/gcloud-tasks-emulator ]]; then
    python3 -m venv .venv-tasks
    .venv-tasks/bin/pip install -q --disable-pip-version-check gcloud-tasks-emulator==0.6.2
  fi
  # checkov pins libraries python-hcl2 needs at other versions: a virtualenv of its own.
  if [[ ! -x .venv-checkov/bin/checkov ]]; then
    python3 -m venv .venv-checkov
    .venv-checkov/bin/pip install -q --disable-pip-version-check checkov==3.3.30
  fi
  # The google provider's schema, for checking terraform/ where the provider cannot be
  # downloaded: it ships inside the provider's CDK bindings (tests/tfcheck.py).
  wheel=var/tools/cdktf_cdktf_provider_google-16.12.1-py3-none-any.whl
  if [[ ! -f "$wheel" ]]; then
    .venv/bin/pip download -q --disable-pip-version-check --no-deps -d var/tools \
      cdktf-cdktf-provider-google==16.12.1
  fi
  # Google's Firestore emulator ships only with the Google Cloud SDK, not from the
  # registries this machine reaches; the machine image provides it.
  jar=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
  [[ -f "$jar" ]] || echo "setup: WARNING: $jar is missing; the Google Cloud mode tests will fail" >&2
  scripts/get-oci-tools.sh
fi
echo "setup: done"
