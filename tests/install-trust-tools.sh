#!/usr/bin/env bash
# Installs the signing tools of the trust tests, cosign 2.5 and oras 1.2, from the Debian
# packages of trixie into target/trust-tools/ (binaries in target/trust-tools/usr/bin), with no
# change to the system. tests/run-all.sh calls it; it can be run alone too.
#
# How: a private apt configuration under target/trust-tools/apt/ (its own sources list, state,
# cache, status and preferences; no source parts) whose one source is the Debian mirror this
# machine is configured with, read from /etc/apt at run time, with only the suite changed to
# trixie. `apt-get update` and `apt-get download` against it, then `dpkg-deb -x`. Both tools
# are Go binaries that need only libc, so they run on Debian 12. The host's apt.conf.d is
# still read (its proxy and TLS settings apply), less its hooks.
#
# Idempotent: nothing is fetched when the binaries are there with the right versions. Fails
# (non-zero) when it cannot install: the end-to-end tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=trixie
want_cosign='2.5.*' # Debian versions, e.g. 2.5.0-2+b5
want_oras='1.2.*'
root="$PWD/target/trust-tools"
bin="$root/usr/bin"

fail() {
  echo "install-trust-tools: $*" >&2
  exit 1
}

# The package versions recorded at extraction, as "name version" lines.
recorded() { awk -v p="$1" '$1 == p { print $2 }' "$root/versions" 2>/dev/null || true; }

installed() {
  [[ -x $bin/cosign && -x $bin/oras ]] || return 1
  # shellcheck disable=SC2053 # the right-hand sides are patterns
  [[ $(recorded cosign) == $want_cosign && $(recorded oras) == $want_oras ]] || return 1
  # Debian's cosign build says "GitVersion: devel"; its package version is recorded above.
  "$bin/cosign" version >/dev/null 2>&1 || return 1
  # Read the whole output before matching: `oras version | grep -q` under pipefail fails
  # whenever grep exits before oras has written its second line (oras then dies of SIGPIPE).
  local oras_says
  oras_says=$("$bin/oras" version 2>/dev/null) || return 1
  [[ $oras_says =~ (^|$'\n')Version:\ *${want_oras%.\*}\. ]] || return 1
}

if installed; then
  exit 0
fi

# --- The machine's Debian mirror: the first enabled `deb` source of this release's suite.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n $codename ]] || fail "no VERSION_CODENAME in /etc/os-release: is this Debian?"

# Prints "URI SIGNED-BY" (SIGNED-BY may be empty) of the first match, from deb822 files.
from_deb822() {
  awk -v suite="$codename" '
    BEGIN { RS = ""; FS = "\n" }
    {
      delete f; key = ""
      for (i = 1; i <= NF; i++) {
        line = $i
        if (line ~ /^#/) continue
        if (line ~ /^[ \t]/) { if (key != "") f[key] = f[key] " " line; continue }
        n = index(line, ":"); if (!n) continue
        key = tolower(substr(line, 1, n - 1)); f[key] = substr(line, n + 1)
      }
      if (tolower(f["enabled"]) ~ /no/) next
      if ((" " f["types"] " ") !~ /[ \t]deb[ \t]/) next
      if ((" " f["suites"] " ") !~ ("[ \t]" suite "[ \t]")) next
      split(f["uris"], u, /[ \t]+/); uri = u[1] == "" ? u[2] : u[1]
      sb = f["signed-by"]; gsub(/^[ \t]+|[ \t]+$/, "", sb)
      if (sb !~ /^\/[^ \t]*$/) sb = ""   # an inline key block is not reused
      if (uri != "") { print uri, sb; exit }
    }' "$@" 2>/dev/null
}

# The same from one-line sources: deb [options] URI SUITE COMPONENTS...
from_one_line() {
  awk -v suite="$codename" '
    $1 != "deb" { next }
    {
      opts = ""; i = 2
      if ($2 ~ /^\[/) { while (i <= NF) { opts = opts " " $i; if ($i ~ /\]$/) { i++; break }; i++ } }
      if ($(i + 1) != suite) next
      sb = ""
      if (match(opts, /signed-by=[^] \t]+/)) sb = substr(opts, RSTART + 10, RLENGTH - 10)
      print $i, sb; exit
    }' "$@" 2>/dev/null
}

found=""
shopt -s nullglob
deb822_files=(/etc/apt/sources.list.d/*.sources)
list_files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
shopt -u nullglob
((${#deb822_files[@]})) && found=$(from_deb822 "${deb822_files[@]}")
if [[ -z $found ]]; then
  existing=()
  for f in "${list_files[@]}"; do [[ -f $f ]] && existing+=("$f"); done
  ((${#existing[@]})) && found=$(from_one_line "${existing[@]}")
fi
[[ -n $found ]] || fail "no enabled 'deb' source for suite $codename in /etc/apt: cannot derive the Debian mirror"
read -r mirror signed_by <<<"$found"
echo "installing cosign and oras from $suite (the configured Debian mirror, suite $suite) into target/trust-tools"

# --- A private apt configuration.
apt_dir="$root/apt"
rm -rf "$apt_dir"
mkdir -p "$apt_dir"/{lists/partial,archives/partial,sources.list.d,preferences.d,debs}
: >"$apt_dir/status"
: >"$apt_dir/preferences"
opts=""
[[ -n $signed_by ]] && opts="[signed-by=$signed_by] "
echo "deb ${opts}${mirror} ${suite} main" >"$apt_dir/sources.list"
cat >"$apt_dir/apt.conf" <<EOF
Dir::State "$apt_dir";
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::State::extended_states "$apt_dir/extended_states";
Dir::Cache "$apt_dir";
Dir::Cache::Archives "$apt_dir/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "$apt_dir/sources.list.d";
Dir::Etc::Preferences "$apt_dir/preferences";
Dir::Etc::PreferencesParts "$apt_dir/preferences.d";
Dir::Log "$apt_dir";
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
EOF
apt=(-c "$apt_dir/apt.conf")

apt-get "${apt[@]}" -qq update || fail "apt-get update against $suite failed"

version_of() {
  apt-cache "${apt[@]}" policy "$1" | awk '/Candidate:/ { print $2 }'
}
cosign_version=$(version_of cosign)
oras_version=$(version_of oras)
# shellcheck disable=SC2053
[[ $cosign_version == $want_cosign ]] || fail "$suite has cosign '${cosign_version:-none}', the tests need $want_cosign"
# shellcheck disable=SC2053
[[ $oras_version == $want_oras ]] || fail "$suite has oras '${oras_version:-none}', the tests need $want_oras"

(cd "$apt_dir/debs" && apt-get "${apt[@]}" -qq download "cosign=$cosign_version" "oras=$oras_version") ||
  fail "apt-get download cosign=$cosign_version oras=$oras_version failed"

rm -rf "$root/usr"
for deb in "$apt_dir"/debs/*.deb; do
  dpkg-deb -x "$deb" "$root"
done
printf 'cosign %s\noras %s\n' "$cosign_version" "$oras_version" >"$root/versions"
# The lists and packages are not needed any more (about 25 MB).
rm -rf "$apt_dir"

installed || fail "cosign or oras was extracted but does not run: $("$bin/cosign" version 2>&1 | tail -1); $("$bin/oras" version 2>&1 | head -1)"
echo "installed cosign $cosign_version and oras $oras_version in target/trust-tools/usr/bin"
