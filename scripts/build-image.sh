#!/usr/bin/env bash
# Builds a Delibera image offline and reproducibly: no daemon, no base image
# from a registry, the same digest for the same commit on the same toolchain
# and Debian release.
#
#   scripts/build-image.sh [--image NAME] [--output DIR] [--context DIR] [--push DEST]
#
#   --image NAME   delibera-agent (default: the agent, one image for both
#                  roles, bins/agent/Containerfile) or protocol-api (the
#                  server, bins/protocol-api/Containerfile)
#   --output DIR   where to write NAME.oci.tar (an OCI archive) and
#                  NAME.digest (default: target/image)
#   --context DIR  assemble the build context (rootfs/, and data/ for the
#                  server) into DIR and stop, for building the Containerfile
#                  with another tool
#   --push DEST    also push the image to DEST, a containers transport such as
#                  docker://ghcr.io/OWNER/NAME:TAG (log in first with
#                  `buildah login`); fails unless DEST holds the very digest
#                  of the archive, and prints DEST's name@sha256:…
#
# The last line printed is the image digest, `sha256:…`: what WORKER_IMAGE and
# COORDINATOR_IMAGE pin (`name@sha256:…`) for the agent. Needs cargo and, unless --context,
# buildah (Debian: `apt-get install buildah`); runs as root or wherever buildah
# can use its vfs storage driver.
set -euo pipefail

usage() { sed -n '6,24p' "$0" | sed 's/^# \{0,1\}//'; }

root=$(cd "$(dirname "$0")/.." && pwd)
output=$root/target/image
context=
push=
image=delibera-agent
while [ $# -gt 0 ]; do
  case $1 in
    --image) image=${2:?--image needs a name}; shift 2 ;;
    --output) output=${2:?--output needs a directory}; shift 2 ;;
    --context) context=${2:?--context needs a directory}; shift 2 ;;
    --push) push=${2:?--push needs a destination}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-image: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# What each image holds: the package and binary, and its Containerfile.
case $image in
  delibera-agent) package=delibera-agent-bin; binary_name=delibera-agent; containerfile=bins/agent/Containerfile ;;
  protocol-api) package=protocol-api; binary_name=protocol-api; containerfile=bins/protocol-api/Containerfile ;;
  *) echo "build-image: unknown image: $image (delibera-agent or protocol-api)" >&2; exit 2 ;;
esac

if [ -z "$context" ] && ! command -v buildah >/dev/null; then
  echo "build-image: buildah is not installed (Debian: apt-get install buildah)" >&2
  exit 3
fi
# The image's libraries and their package list come from Debian's tools.
for tool in ldd dpkg dpkg-query; do
  if ! command -v "$tool" >/dev/null; then
    echo "build-image: $tool is missing: the image is assembled from a Debian system's packages" >&2
    exit 3
  fi
done

# Every timestamp in the image is the commit's, so the digest depends on the
# sources only, not on when they were built.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

# 1. The binary. Its own target directory, since the flags below differ
# from a developer's release build; paths of this checkout and of the cargo
# cache are remapped so that where the sources sit does not change a byte.
# Cargo runs in a clean environment: a caller's RUSTFLAGS, CFLAGS or a test
# harness's variables must neither change the binary nor force a rebuild.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
target_dir=$root/target/image-build
(
  cd "$root"
  # Flags separated by 0x1f, so a path with spaces stays one argument.
  flags=$(printf '%s\037%s' "--remap-path-prefix=$root=/delibera" "--remap-path-prefix=$cargo_home=/cargo")
  env -i PATH="$PATH" HOME="$HOME" CARGO_HOME="$cargo_home" \
    ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} \
    CARGO_ENCODED_RUSTFLAGS="$flags" \
    CARGO_TARGET_DIR="$target_dir" \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --quiet -p "$package" --bin "$binary_name"
)
binary=$target_dir/release/$binary_name

# 2. The root filesystem: the binary, the shared libraries it loads (taken from
# this machine's Debian packages, listed in the image), a non-root user and
# /tmp. TLS roots are compiled into the binary (webpki-roots), so no CA bundle.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
ctx=${context:-$staging/context}
rm -rf "$ctx/rootfs"
rootfs=$ctx/rootfs
mkdir -p "$rootfs"
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/$binary_name"
# A static binary loads nothing (ldd then fails, saying so).
libraries=$( { ldd "$binary" 2>/dev/null || true; } \
  | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
packages=
for library in $libraries; do
  install -D -m 0755 "$(readlink -f "$library")" "$rootfs$library"
  # dpkg knows a file by the path its package ships (before /usr was merged).
  owner=$( { dpkg -S "$library" || dpkg -S "$(readlink -f "$library")"; } 2>/dev/null | head -n1 | cut -d: -f1 || true)
  if [ -z "$owner" ]; then
    echo "build-image: no Debian package ships $library: the image would hold a file of unknown origin" >&2
    exit 3
  fi
  packages="$packages $owner"
done
mkdir -p "$rootfs/usr/share/delibera"
: > "$rootfs/usr/share/delibera/debian-packages"
for package in $(printf '%s\n' $packages | sort -u); do
  dpkg-query -W -f '${Package} ${Version}\n' "$package" >> "$rootfs/usr/share/delibera/debian-packages"
done
mkdir -p "$rootfs/etc"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\ndelibera:x:10001:10001:delibera:/nonexistent:/usr/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\ndelibera:x:10001:\n' > "$rootfs/etc/group"
mkdir -p "$rootfs/tmp"
# The server's data dir, copied apart so its Containerfile can give it to
# the server's user.
if [ "$image" = protocol-api ]; then
  rm -rf "$ctx/data"
  mkdir -p "$ctx/data"
  touch -d "@$SOURCE_DATE_EPOCH" "$ctx/data"
fi
# Modes and times fixed here too, so other tools building from the context
# see what buildah records.
find "$rootfs" -type d -exec chmod 0755 {} +
find "$rootfs" -type f ! -path '*/bin/*' ! -name '*.so*' -exec chmod 0644 {} +
chmod 1777 "$rootfs/tmp"
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
if [ -n "$context" ]; then
  echo "build-image: context assembled in $context (build it with $containerfile)" >&2
  exit 0
fi

# 3. The image, in a private vfs store so builds are independent and leave
# nothing behind, then the OCI archive and its digest.
store=$staging/store
buildah_store=(--root "$store/root" --runroot "$store/run" --storage-driver vfs)
tag=localhost/$image:build
buildah "${buildah_store[@]}" build --quiet --isolation chroot --format oci \
  --timestamp "$SOURCE_DATE_EPOCH" --layers=false \
  -f "$root/$containerfile" -t "$tag" "$ctx" >/dev/null
mkdir -p "$output"
archive=$output/$image.oci.tar
rm -f "$archive"
buildah "${buildah_store[@]}" push --quiet --digestfile "$staging/digest" \
  "$tag" "oci-archive:$archive:$image" >/dev/null
digest=$(cat "$staging/digest")
echo "$digest" > "$output/$image.digest"
echo "build-image: $archive" >&2

if [ -n "$push" ]; then
  # The same layers, compressed the same way, so the same digest: checked.
  buildah "${buildah_store[@]}" push --quiet --digestfile "$staging/pushed" "$tag" "$push" >/dev/null
  pushed=$(cat "$staging/pushed")
  if [ "$pushed" != "$digest" ]; then
    echo "build-image: $push holds $pushed, not the archive's $digest" >&2
    exit 4
  fi
  name=${push#*:}
  name=${name#//}
  # Drop a tag (a colon after the last slash), not a registry's port.
  case ${name##*/} in *:*) name=${name%:*} ;; esac
  echo "build-image: pushed ${name}@${digest}" >&2
fi
echo "$digest"
