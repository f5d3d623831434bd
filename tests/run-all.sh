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
  [unshare]=util-linux
)
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
if ((${#missing[@]})); then
  echo "installing end-to-end test dependencies: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
if compgen -G "benches/*.rs" >/dev/null; then
  cargo bench --workspace --locked --no-run
fi
