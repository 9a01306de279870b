#!/usr/bin/env bash
# Installs what building, running and testing mesh needs on a Debian or
# Ubuntu machine. Idempotent: installs only what is missing. Run as root.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (mesh creates network namespaces and programs the kernel)" >&2
    exit 1
fi

# command -> Debian package providing it
declare -A wanted=(
    [ip]=iproute2
    [bridge]=iproute2
    [nft]=nftables
    [ping]=iputils-ping
    [conntrack]=conntrack
    [pkill]=procps
    [gcc]=gcc
    # The sandbox's demo commands (README) ask the service with curl.
    [curl]=curl
    # The IPVS test boots Debian's cloud kernel under qemu (dataplane/vm/).
    [qemu-system-x86_64]=qemu-system-x86
    [busybox]=busybox-static
    [cpio]=cpio
    [depmod]=kmod
    # The compose/ cluster and its test: compose v1 and the base image's root filesystem
    # (the Docker engine itself is not installed: without one the test is skipped).
    [docker-compose]=docker-compose
    [mmdebstrap]=mmdebstrap
    # The Vagrant cluster and its test (tests/tests/vagrant.rs): VMs under libvirt with a box
    # built locally (vagrant/build-box.sh), mesh installed from its Debian package.
    [vagrant]="vagrant vagrant-libvirt"
    [libvirtd]="libvirt-daemon-system libvirt-clients"
    [qemu-img]=qemu-utils
    [dnsmasq]=dnsmasq-base
    [iptables]=iptables
    [ebtables]=ebtables
)
missing=()
for cmd in "${!wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # A machine whose qemu-utils came from bookworm-backports cannot take bookworm's
    # qemu-system-x86 (qemu-utils breaks qemu-system-common < 8.0): take QEMU from the same
    # backports release, with its own sources entry.
    qemu_utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ "$qemu_utils" == *bpo12* ]] && ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        echo "setup: qemu-utils $qemu_utils is a bookworm backport; QEMU comes from there too"
        echo 'deb http://deb.debian.org/debian bookworm-backports main' \
            >/etc/apt/sources.list.d/mesh-bookworm-backports.list
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
    fi
    # shellcheck disable=SC2086 # a value may name several packages
    apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install a Rust toolchain (1.90 or newer) first" >&2
    exit 1
fi

# The Debian package (node/debian/build-deb.sh) is built with cargo-deb.
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "setup: installing cargo-deb"
    cargo install cargo-deb --locked --quiet
fi
