#!/usr/bin/env bash
# Makes a Debian bookworm base image without a container registry: `debootstrap --variant=minbase` from
# Debian's own mirror, then `docker import`. Skips everything when the image already exists (the cache
# between CI runs), so only the first run pays the ~40 s.
#
# Usage: scripts/docker-base-image.sh [IMAGE]        (default machine-base:bookworm)
#        DEBIAN_MIRROR=http://deb.debian.org/debian scripts/docker-base-image.sh
# Then:  docker build --network host --build-arg BASE_IMAGE=machine-base:bookworm ...
# Needs root (debootstrap), debootstrap and a running Docker engine. Exit 0 when the image exists.
set -euo pipefail

image="${1:-machine-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "docker-base-image: $image exists, nothing to do"
    exit 0
fi
command -v debootstrap >/dev/null \
    || { echo "docker-base-image: debootstrap is missing: apt-get install -y debootstrap" >&2; exit 2; }
[ "$(id -u)" = 0 ] \
    || { echo "docker-base-image: debootstrap needs root; run it with sudo" >&2; exit 2; }

dir="$(mktemp -d /tmp/machine-base.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
echo "docker-base-image: debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { tail -n 20 "$dir.log" >&2; rm -f "$dir.log"; exit 1; }
rm -f "$dir.log"
# The image's apt reads the same mirror with the security updates; no package lists or caches inside.
cat >"$dir/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
# As debian:bookworm-slim: no manuals, documentation or translations, now or from later apt installs.
cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
find "$dir/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/*
find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# Import the tree with a sane default command and environment, as debian:bookworm-slim has.
tar -C "$dir" --numeric-owner -c . \
    | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
echo "docker-base-image: imported $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
