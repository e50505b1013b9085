#!/usr/bin/env bash
# `make image`: builds the Dockerfile with docker where a daemon answers, with buildah
# otherwise, on a Debian base made here by debootstrap from a pinned point release.
#
# The base is pinned by Debian point release: the mirror's bookworm Release file must
# say Version $DEBIAN_RELEASE, or the build stops (bump the pin on purpose, not by
# accident). The root it makes is cached as a tarball in $HITL_IMAGE_CACHE and imported
# as the local image $BASE_IMAGE; a clean machine makes both. Missing tools (buildah,
# debootstrap) are installed from Debian's packages; if that fails, so does the build.
#
# Writes the builder and image name to .tools/image for `make image-check`.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_SUITE=bookworm
DEBIAN_RELEASE=12.15
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${HITL_IMAGE_CACHE:-/var/cache/hitl-grpc}
BASE_IMAGE=hitl-grpc-base:$DEBIAN_SUITE-$DEBIAN_RELEASE
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
IMAGE=${IMAGE:-hitl-grpc:$VERSION}
BUILDAH=(buildah --storage-driver vfs)

fail() { echo "make image: $*" >&2; exit 1; }

need() { deploy/need.sh "$@" || fail "$2 is needed"; }

if command -v docker > /dev/null && docker info > /dev/null 2>&1; then
  BUILDER=docker
else
  BUILDER=buildah
  need buildah buildah
fi

base_exists() {
  if [ "$BUILDER" = docker ]; then
    docker image inspect "$BASE_IMAGE" > /dev/null 2>&1
  else
    "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" > /dev/null 2>&1
  fi
}

# The root filesystem of debian:bookworm-slim's kind: minbase, apt sources as slim's.
make_base_tarball() {
  local tarball=$1 release
  need debootstrap debootstrap
  need curl curl
  release=$(curl -fsS "$DEBIAN_MIRROR/dists/$DEBIAN_SUITE/Release") \
    || fail "cannot read $DEBIAN_MIRROR/dists/$DEBIAN_SUITE/Release"
  local at
  at=$(sed -n 's/^Version: //p' <<< "$release")
  [ "$at" = "$DEBIAN_RELEASE" ] \
    || fail "the mirror has Debian $at, the pin is $DEBIAN_RELEASE: change DEBIAN_RELEASE in $0"
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/root.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; fail "debootstrap failed"; }
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" << EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
  chroot "$root" dpkg-query -W -f '${Package}=${Version}\n' > "$tarball.packages"
  local stamp
  stamp=$(date -d "$(sed -n 's/^Date: //p' <<< "$release")" +%s)
  tar --numeric-owner --sort=name --mtime="@$stamp" --exclude='./dev/*' --exclude='./proc/*' \
    --exclude='./sys/*' -C "$root" -cf "$tarball.new" .
  mv "$tarball.new" "$tarball"
  rm -rf "$root"
}

import_base() {
  local tarball=$CACHE/debian-$DEBIAN_SUITE-$DEBIAN_RELEASE-minbase.tar
  [ -s "$tarball" ] || make_base_tarball "$tarball"
  local digest
  digest=sha256:$(sha256sum "$tarball" | cut -d' ' -f1)
  echo "base: $BASE_IMAGE from $tarball ($digest)"
  local path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  if [ "$BUILDER" = docker ]; then
    docker import --change "ENV $path" --change 'CMD ["bash"]' "$tarball" "$BASE_IMAGE" > /dev/null
  else
    local ctr
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "$ctr" "$tarball" / > /dev/null
    "${BUILDAH[@]}" config --env "$path" --cmd bash \
      --label "org.hitl-grpc.base.debian-release=$DEBIAN_RELEASE" \
      --label "org.hitl-grpc.base.rootfs=$digest" "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" > /dev/null
  fi
}

base_exists || import_base

# The wheels the image installs, offline: the runtime requirements at the lock file's
# versions, and this tree's own wheel. The host's pip reaches the index; the build need not.
WHEELS=build/image-wheels
rm -rf "$WHEELS" && mkdir -p "$WHEELS/deps" "$WHEELS/app"
.venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > "$WHEELS/requirements.txt"
.venv/bin/pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
  --constraint constraints.txt --requirement "$WHEELS/requirements.txt" --dest "$WHEELS/deps"
# Dated by the last commit, so the same source gives the same wheel (and a cached layer).
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2> /dev/null || echo 315532800) \
  .venv/bin/pip wheel --quiet --no-deps --wheel-dir "$WHEELS/app" .

echo "building $IMAGE with $BUILDER on $BASE_IMAGE"
args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "VERSION=$VERSION" -t "$IMAGE" .)
if [ "$BUILDER" = docker ]; then
  docker build "${args[@]}"
else
  "${BUILDAH[@]}" bud --isolation chroot --format docker --layers "${args[@]}"
fi
mkdir -p .tools
echo "$BUILDER $IMAGE" > .tools/image
