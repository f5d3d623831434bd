#!/usr/bin/env bash
# Counts the user-space instructions of one manifest GET that hits the cache, in a plain
# pullgate and in one whose `verify` rule has a cached verdict for it: the trust policy's
# cost on a hit, in a figure that does not move with the machine's load (valgrind's
# callgrind). docs/benchmarks.md ("What a hit costs, counted") records what it printed.
#
# Run from the repository root after `cargo build --release --bin pullgate` and
# tests/install-trust-tools.sh (cosign, oras); needs docker-registry, curl and valgrind.
# Everything it starts listens on loopback and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/target/release/pullgate
export PATH=$root/target/trust-tools/usr/bin:$PATH
n=${N:-3000}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
reg_port=$(free_port)
cat >reg.yml <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$reg_port
EOF
docker-registry serve reg.yml >registry.log 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$reg_port/v2/" >/dev/null && break; sleep 0.1; done

# A small artifact manifest, signed with a key of our own (no transparency log).
echo hello >f.txt
oras push --plain-http "127.0.0.1:$reg_port/team/app:v1" f.txt >/dev/null
digest=$(oras resolve --plain-http "127.0.0.1:$reg_port/team/app:v1")
COSIGN_PASSWORD= cosign generate-key-pair >/dev/null 2>&1
COSIGN_PASSWORD= cosign sign --key cosign.key --tlog-upload=false --allow-insecure-registry \
  --allow-http-registry -y "127.0.0.1:$reg_port/team/app@$digest" >/dev/null 2>&1

ports=()
for mirror in plain trusted; do
  port=$(free_port)
  ports+=("$port")
  cat >"$mirror.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[cache]
dir = "$work/cache-$mirror"
tag_ttl = "10m"

[[upstream]]
name = "127.0.0.1:$reg_port"
url = "http://127.0.0.1:$reg_port"
EOF
  if [[ $mirror == trusted ]]; then
    cat >>"$mirror.toml" <<EOF

[[trust.key]]
name = "bench"
path = "$work/cosign.pub"

[[trust.rule]]
images = ["127.0.0.1:$reg_port/**"]
action = "verify"
signed_by = ["bench"]
EOF
  fi
  RUST_LOG=info NO_COLOR=1 valgrind --tool=callgrind --callgrind-out-file="$work/$mirror.cg" \
    "$bin" serve --config "$mirror.toml" >"$mirror.log" 2>&1 &
  pids+=($!)
done
accept="application/vnd.oci.image.manifest.v1+json"
for port in "${ports[@]}"; do
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  # The first GET fills (and, trusted, verifies); the second is a hit already.
  for _ in 1 2; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Accept: $accept" \
      "http://127.0.0.1:$port/v2/team/app/manifests/$digest")
    [[ $code == 200 ]] || { echo "warm-up GET on $port: $code" >&2; exit 1; }
  done
done
# Count only the hits: zero the counters, one curl with N GETs on one connection each, dump.
callgrind_control -z "${pids[1]}" >/dev/null
callgrind_control -z "${pids[2]}" >/dev/null
for port in "${ports[@]}"; do
  urls=()
  for _ in $(seq "$n"); do urls+=("http://127.0.0.1:$port/v2/team/app/manifests/$digest"); done
  curl -sf -H "Accept: $accept" "${urls[@]}" >/dev/null
done
callgrind_control -d "${pids[1]}" >/dev/null
callgrind_control -d "${pids[2]}" >/dev/null
sleep 1
for mirror in plain trusted; do
  total=$(awk '/^summary:/ { print $2 }' "$work/$mirror.cg.1")
  echo "$mirror: $((total / n)) instructions per manifest hit ($n hits)"
done
