#!/usr/bin/env bash
# Builds the base image of the mesh node image from Debian's packages (no registry needed):
# a minimal bookworm root filesystem with what mesh runs (ip, nft, conntrack) and what the
# demo and tests use (curl, ping, ps), imported into the local Docker engine.
#   compose/base-image.sh [IMAGE]     # default mesh-base:bookworm
# Does nothing when IMAGE already exists; `docker rmi IMAGE` to rebuild. Run as root.
set -euo pipefail

image=${1:-${MESH_BASE_IMAGE:-mesh-base:bookworm}}
if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
command -v mmdebstrap >/dev/null 2>&1 || {
    echo "base-image: mmdebstrap is missing (apt-get install mmdebstrap, or scripts/setup.sh)" >&2
    exit 1
}

work=$(mktemp -d /tmp/mesh-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "base-image: building $image with mmdebstrap (about half a minute)" >&2
mmdebstrap --quiet --variant=minbase \
    --include=iproute2,nftables,conntrack,iputils-ping,curl,procps,ca-certificates,kmod \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$work/rootfs.tar"
docker import --message "mesh base: Debian bookworm minbase" "$work/rootfs.tar" "$image" >/dev/null
echo "base-image: $image built" >&2
