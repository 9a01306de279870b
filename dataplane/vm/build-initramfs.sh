#!/usr/bin/env bash
# Builds a bootable Debian cloud kernel + initramfs that runs one test binary, for testing
# kernel features this machine's kernel lacks (IPVS). See dataplane/vm/README.md.
#
# usage: build-initramfs.sh CACHE_DIR TEST_BINARY OUT_DIR [TEST_ARGS...]
#   CACHE_DIR   keeps the downloaded kernel packages and their unpacked tree (reruns are fast)
#   TEST_BINARY the binary /init runs (with TEST_ARGS and MESH_IPVS_VM_INNER=1)
#   OUT_DIR     receives vmlinuz and initrd.gz
# Needs: apt-get, dpkg, cpio, gzip, busybox-static, kmod, nftables (setup.sh installs them).
# Prints "build-initramfs: FAIL <reason>" and exits non-zero on failure.
set -euo pipefail

fail() { echo "build-initramfs: FAIL $*" >&2; exit 1; }

[ $# -ge 3 ] || fail "usage: $0 CACHE_DIR TEST_BINARY OUT_DIR [TEST_ARGS...]"
cache=$1 binary=$2 out=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache" "$out"
cache=$(cd "$cache" && pwd)

for tool in apt-get dpkg-deb cpio gzip depmod; do
    command -v "$tool" >/dev/null || fail "$tool not found: run scripts/setup.sh"
done
busybox=/bin/busybox
[ -x "$busybox" ] || fail "busybox not installed (package busybox-static)"

# 1. Debian's cloud kernel: the meta package names the versioned one it depends on.
download() {
    # apt-get download writes into the current directory.
    (cd "$cache" && apt-get download "$1" >/dev/null 2>"$cache/apt.err") && return 0
    # Stale or missing package lists: refresh once, then retry.
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$cache" && apt-get download "$1" >/dev/null 2>"$cache/apt.err") ||
        fail "cannot download Debian package $1 (are Debian's mirrors reachable?): $(tail -n 3 "$cache/apt.err")"
}
meta=$(ls "$cache"/linux-image-cloud-amd64_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$meta" ]; then
    download linux-image-cloud-amd64
    meta=$(ls "$cache"/linux-image-cloud-amd64_*.deb | head -n 1)
fi
versioned=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*-cloud-amd64\).*/\1/p' | head -n 1)
[ -n "$versioned" ] || fail "cannot read the kernel package from $(basename "$meta")'s Depends"
kver=${versioned#linux-image-}
deb=$(ls "$cache/${versioned}"_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
    download "$versioned"
    deb=$(ls "$cache/${versioned}"_*.deb | head -n 1)
fi
kernel="$cache/kernel-$kver"
if [ ! -f "$kernel/.unpacked" ]; then
    rm -rf "$kernel"
    dpkg-deb -x "$deb" "$kernel" || fail "cannot unpack $deb"
    touch "$kernel/.unpacked"
fi
cp "$kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# 2. The root file system.
root=$(mktemp -d "$out/rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,lib/modules}
cp "$busybox" "$root/bin/busybox"
# kmod (handles every module format) as modprobe: the kernel calls /sbin/modprobe to load
# modules on demand (veth, bridge, nf_tables expressions...).
kmod=$(command -v kmod)
cp "$kmod" "$root/sbin/kmod"
for l in modprobe insmod lsmod depmod; do ln -s kmod "$root/sbin/$l"; done
cp "$(command -v nft)" "$root/usr/sbin/nft"
cp "$binary" "$root/mesh-test"
for f in /etc/protocols /etc/services; do [ -f "$f" ] && cp "$f" "$root/etc/"; done

# Shared libraries of every dynamic binary, at the paths the loader looks for them.
for bin in "$root/bin/busybox" "$root/sbin/kmod" "$root/usr/sbin/nft" "$root/mesh-test"; do
    # A static binary has none (ldd fails, grep finds nothing).
    libs=$(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true)
    for lib in $libs; do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done

# Only the module directories the test can need (the whole tree is ~90 MiB).
mods="$kernel/lib/modules/$kver"
dst="$root/lib/modules/$kver"
mkdir -p "$dst/kernel/drivers/net"
cp -a "$mods/kernel/net" "$mods/kernel/lib" "$mods/kernel/crypto" "$dst/kernel/"
cp -a "$mods/kernel/drivers/net/veth.ko"* "$dst/kernel/drivers/net/"
cp "$mods"/modules.order "$mods"/modules.builtin "$mods"/modules.builtin.modinfo "$dst/"
depmod -b "$root" "$kver" || fail "depmod failed for $kver"

# 3. /init: mount, load IPVS, run the test, print one result line, power off.
{
    echo '#!/bin/busybox sh'
    echo "TEST_ARGS='$*'"
    cat "$here/init.sh"
} >"$root/init"
chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.gz"
echo "build-initramfs: ok kernel $kver, initrd $(du -h "$out/initrd.gz" | cut -f1)"
