#!/usr/bin/env bash
# Build pullgate's container image with buildah, FROM SCRATCH, out of a pullgate binary built
# beforehand (cargo build --release): no base image is downloaded and nothing is run inside
# the image, so it works offline and needs no container runtime or daemon. The image has the
# layout docker/Dockerfile describes (which needs a base image from a registry):
#
#   /usr/local/bin/pullgate            the binary           ENTRYPOINT ["/usr/local/bin/pullgate"]
#   the binary's shared libraries and the dynamic loader, at the paths `ldd` shows
#   /etc/ssl/certs/ca-certificates.crt CA roots (for https upstreams)
#   /etc/passwd, /etc/group            root, and pullgate 65532:65532  USER 65532:65532
#   /etc/nsswitch.conf                 hosts: files dns
#   /etc/pullgate/pullgate.toml        docker/pullgate.toml CMD ["serve", "--config", "/etc/pullgate/pullgate.toml"]
#   /var/lib/pullgate                  the cache, empty, owned by 65532  VOLUME, WORKDIR
#   /tmp                               1777
#   port 5000/tcp, stop signal SIGTERM, org.opencontainers.image.* labels, OCI format
#
# The shipped configuration listens on 0.0.0.0:5000 and requires client credentials: mount a
# dockerconfigjson secret at /var/run/secrets/pullgate/clients, or your own configuration
# over /etc/pullgate/pullgate.toml (see docker/pullgate.toml).
#
# Usage:
#   docker/build-image.sh [--push DEST] [--digestfile FILE] [--insecure] BINARY IMAGE
#     BINARY  the pullgate binary, e.g. target/release/pullgate
#     IMAGE   the local image name, e.g. localhost/pullgate:dev
#     --push DEST        then push it: DEST is a registry reference (docker:// is implied),
#                        e.g. 127.0.0.1:5001/pullgate:dev, or any transport buildah knows
#     --digestfile FILE  write the pushed manifest's digest there
#     --insecure         push over plain http / without TLS verification; implied for
#                        127.0.0.1, [::1] and localhost
#
# Environment:
#   BUILDAH_ROOT, BUILDAH_RUNROOT  buildah's storage root and run root (--root, --runroot);
#                                  otherwise containers-storage.conf decides (honours
#                                  CONTAINERS_STORAGE_CONF)
#   STORAGE_DRIVER                 storage driver (default vfs: no kernel support needed)
#   SOURCE_DATE_EPOCH              the image's creation time and file times (reproducible
#                                  builds); otherwise now
#   CA_BUNDLE                      CA roots to ship (default /etc/ssl/certs/ca-certificates.crt)
#   REGISTRY_AUTH_FILE             credentials for the push, as buildah reads them
set -euo pipefail

usage() {
  sed -n '/^# Usage:/,/^# Environment:/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

push="" digestfile="" insecure=0
while (($#)); do
  case $1 in
    --push) push=${2:?--push needs a destination}; shift 2 ;;
    --digestfile) digestfile=${2:?--digestfile needs a file}; shift 2 ;;
    --insecure) insecure=1; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# == 2)) || usage
binary=$1 image=$2
here=$(cd "$(dirname "$0")" && pwd)
config=$here/pullgate.toml
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
uid=65532 gid=65532

die() { echo "build-image.sh: $*" >&2; exit 1; }
command -v buildah >/dev/null || die "buildah is not installed (apt-get install buildah)"
[[ -f $binary && -x $binary ]] || die "$binary is not an executable file"
[[ -f $config ]] || die "$config is missing"
[[ -f $ca_bundle ]] || die "no CA roots at $ca_bundle (set CA_BUNDLE)"
version=$("$binary" --version | awk '{print $2}')
[[ -n $version ]] || die "$binary --version said nothing"

# Global buildah flags: storage in the caller's hands, no daemon, no network, nothing run.
bh=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
[[ -z ${BUILDAH_ROOT:-} ]] || bh+=(--root "$BUILDAH_ROOT")
[[ -z ${BUILDAH_RUNROOT:-} ]] || bh+=(--runroot "$BUILDAH_RUNROOT")
export BUILDAH_ISOLATION=chroot

stage=$(mktemp -d "${TMPDIR:-/tmp}/pullgate-image.XXXXXX")
container=""
cleanup() {
  [[ -z $container ]] || "${bh[@]}" rm "$container" >/dev/null 2>&1 || true
  rm -rf "$stage"
}
trap cleanup EXIT

# The root filesystem, staged as plain files; everything but the cache is root's.
root=$stage/rootfs
mkdir -p "$root"/{usr/local/bin,etc/ssl/certs,etc/pullgate,var/lib/pullgate,tmp}
install -m 0755 "$binary" "$root/usr/local/bin/pullgate"
install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0644 "$config" "$root/etc/pullgate/pullgate.toml"
chmod 1777 "$root/tmp"
chmod 0750 "$root/var/lib/pullgate"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  "pullgate:x:$uid:$gid:pullgate:/var/lib/pullgate:/sbin/nologin" >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' "pullgate:x:$gid:" >"$root/etc/group"
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"

# Shared libraries and the loader, copied (symlinks followed) to the paths ldd names. A
# static binary has none.
if ldd_out=$(ldd "$binary" 2>&1); then
  if grep -q 'not found' <<<"$ldd_out"; then
    die "$binary needs libraries this machine lacks:"$'\n'"$ldd_out"
  fi
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    chmod 0755 "$root$lib"
  done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)
elif ! grep -q -e 'not a dynamic executable' -e 'statically linked' <<<"$ldd_out"; then
  die "ldd $binary failed: $ldd_out"
fi

if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
  find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  timestamp=(--timestamp "$SOURCE_DATE_EPOCH")
else
  created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  timestamp=()
fi
revision=$(git -C "$here" rev-parse HEAD 2>/dev/null || true)
license=$(sed -n 's/^license = "\(.*\)"/\1/p' "$here/../Cargo.toml" 2>/dev/null | head -n1)

container=$("${bh[@]}" from --quiet --pull=false --isolation chroot scratch)
"${bh[@]}" copy --quiet --chown 0:0 "$container" "$root" /
"${bh[@]}" copy --quiet --chown "$uid:$gid" "$container" "$root/var/lib/pullgate" /var/lib/pullgate

labels=(
  --label "org.opencontainers.image.title=pullgate"
  --label "org.opencontainers.image.description=An authenticating pull-through OCI registry mirror"
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.created=$created"
)
[[ -z $revision ]] || labels+=(--label "org.opencontainers.image.revision=$revision")
[[ -z $license ]] || labels+=(--label "org.opencontainers.image.licenses=$license")
"${bh[@]}" config \
  --os linux \
  --user "$uid:$gid" \
  --workingdir /var/lib/pullgate \
  --volume /var/lib/pullgate \
  --port 5000/tcp \
  --stop-signal SIGTERM \
  --entrypoint '["/usr/local/bin/pullgate"]' \
  --cmd '["serve", "--config", "/etc/pullgate/pullgate.toml"]' \
  --created-by "docker/build-image.sh" \
  "${labels[@]}" \
  "$container"
"${bh[@]}" commit --quiet --format oci --rm "${timestamp[@]}" "$container" "$image" >/dev/null
container=""
echo "built $image (pullgate $version)" >&2

if [[ -n $push ]]; then
  dest=$push
  case $dest in
    docker://* | oci:* | oci-archive:* | dir:* | docker-archive:* | containers-storage:*) ;;
    *) dest=docker://$dest ;;
  esac
  if [[ $dest == docker://* ]]; then
    host=${dest#docker://}
    case ${host%%/*} in
      127.0.0.1 | 127.0.0.1:* | localhost | localhost:* | \[::1\] | \[::1\]:*) insecure=1 ;;
    esac
  fi
  push_args=(--quiet)
  ((insecure)) && push_args+=(--tls-verify=false)
  [[ -z $digestfile ]] || push_args+=(--digestfile "$digestfile")
  "${bh[@]}" push "${push_args[@]}" "$image" "$dest"
  echo "pushed $image to $dest" >&2
fi
