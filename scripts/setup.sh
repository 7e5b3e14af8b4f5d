#!/usr/bin/env bash
# Sets up a Debian 12 machine for Nixery: Nix (offline-capable), the demo set's bootstrap
# busybox, and a Python virtualenv in .venv. With --test, also the registry clients the tests
# pull with (skopeo, podman, containerd, runc), the test dependencies (qemu-user and chromium
# among them; oras and cosign from scripts/get-oci-tools.sh), and the tools the benchmarks
# compare against (pigz, wrk, docker-registry), since the tests run every benchmark in its
# smoke mode, and Google's Firestore emulator, from the Google Cloud SDK's apt repository
# when the machine does not have it; with --bench, only the benchmarks' tools. Idempotent;
# run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# Google's Firestore emulator ships only with the Google Cloud SDK, from Google's own apt
# repository; the machine images this project is developed on come with it. Setting
# NIXERY_FIRESTORE_EMULATOR_JAR to a missing file tries the installation on such a machine.
firestore_jar=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
firestore_jar=${NIXERY_FIRESTORE_EMULATOR_JAR:-$firestore_jar}
gcloud_repo=https://packages.cloud.google.com/apt
gcloud_package=google-cloud-cli-firestore-emulator

packages=(nix-bin busybox-static git ca-certificates netbase python3 python3-venv)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(skopeo podman runc uidmap containerd default-jre-headless)
  packages+=(pigz wrk docker-registry)  # tests/e2e/test_bench.py: the benchmarks' smoke runs
  packages+=(mmdebstrap)  # scripts/build-builder-image.sh: the builder image's base, made locally
  packages+=(qemu-user)  # tests/e2e/test_archives_cpu.py: older CPUs, emulated
  packages+=(chromium)  # tests/e2e/test_pages.py: the web pages in a real browser, via Playwright
  # To add the Google Cloud SDK's apt repository and its key (install_firestore_emulator).
  [[ -f "$firestore_jar" ]] || packages+=(curl gnupg)
fi
if [[ "${1:-}" == "--bench" ]]; then  # bench/: the reference tools they compare against
  packages+=(skopeo pigz wrk docker-registry)
fi

# Stops setup: what failed, then what is missing and where it comes from.
firestore_emulator_missing() {
  echo "setup: $1" >&2
  echo "setup: $firestore_jar is missing, and the Google Cloud mode tests need it:" \
    "install the package $gcloud_package from the Google Cloud SDK's apt repository" \
    "(deb $gcloud_repo cloud-sdk main, signed by $gcloud_repo/doc/apt-key.gpg)," \
    "then run scripts/setup.sh --test again" >&2
  exit 1
}

# Installs the Firestore emulator from the Google Cloud SDK's apt repository, added with its
# signing key unless a source of it is configured already; on failure, removes what it added,
# so that no source left behind breaks the next apt-get update.
install_firestore_emulator() {
  local keyring=/usr/share/keyrings/cloud.google.gpg
  local list=/etc/apt/sources.list.d/google-cloud-sdk.list
  local apt_source key added=()
  # A second source of the same repository with another key would make apt refuse both.
  apt_source=$(grep -ls 'packages\.cloud\.google\.com/apt' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources | head -n 1 || true)
  if [[ -z "$apt_source" ]]; then
    echo "setup: adding the Google Cloud SDK's apt repository ($gcloud_repo) for $gcloud_package"
    key=$(mktemp)
    if ! curl -fsSL --max-time 60 -o "$key" "$gcloud_repo/doc/apt-key.gpg"; then
      rm -f "$key"
      firestore_emulator_missing "cannot download $gcloud_repo/doc/apt-key.gpg"
    fi
    [[ -e "$keyring" ]] || added+=("$keyring")
    if ! gpg --dearmor --yes -o "$keyring" "$key"; then
      rm -f "$key" "${added[@]}"
      firestore_emulator_missing "cannot read the signing key from $gcloud_repo/doc/apt-key.gpg"
    fi
    rm -f "$key"
    echo "deb [signed-by=$keyring] $gcloud_repo cloud-sdk main" >"$list"
    added+=("$list")
    apt_source=$list
  fi
  # Only that source's lists are fetched, and the other sources' lists are kept.
  # --error-on=any: a repository that cannot be reached fails the update, not just warns.
  if ! apt-get update -q --error-on=any -o Dir::Etc::sourcelist="$apt_source" \
    -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 ||
    ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "$gcloud_package"; then
    rm -f "${added[@]}"
    firestore_emulator_missing "cannot install $gcloud_package from $apt_source"
  fi
  [[ -f "$firestore_jar" ]] ||
    firestore_emulator_missing "$gcloud_package is installed, but $firestore_jar is not there"
}

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
  # downloaded: it ships inside the provider's CDK bindings (tests/helpers/tfcheck.py).
  wheel=var/tools/cdktf_cdktf_provider_google-16.12.1-py3-none-any.whl
  if [[ ! -f "$wheel" ]]; then
    .venv/bin/pip download -q --disable-pip-version-check --no-deps -d var/tools \
      cdktf-cdktf-provider-google==16.12.1
  fi
  scripts/get-oci-tools.sh
  [[ -f "$firestore_jar" ]] || install_firestore_emulator
fi
echo "setup: done"
