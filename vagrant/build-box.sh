#!/usr/bin/env bash
# Builds the Vagrant box `mesh/bookworm` (libvirt provider) from Debian's packages, with no
# download from Vagrant Cloud: a bookworm root filesystem with the cloud kernel, systemd, sshd
# and what mesh runs, written into an ext4 image; no bootloader, the box ships the kernel and
# initrd and its Vagrantfile boots them directly. Run as root. About a minute.
#   vagrant/build-box.sh            # builds and adds the box (VAGRANT_HOME, see vagrant/README.md)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${VAGRANT_HOME:=/var/lib/mesh-vagrant/vagrant.d}"
export VAGRANT_HOME
box=mesh/bookworm

if vagrant box list 2>/dev/null | grep -q "^$box "; then
    echo "build-box: $box exists (vagrant box remove $box to rebuild)" >&2
    exit 0
fi
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$key" ] || { echo "build-box: Vagrant's insecure public key not found (apt-get install vagrant)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/mesh-box.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

mmdebstrap --quiet --variant=minbase \
    --include=linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,dbus,openssh-server,sudo,iproute2,nftables,conntrack,kmod,iputils-ping,procps,rsync,curl,ca-certificates,netbase \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='chroot "$1" useradd -m -s /bin/bash vagrant' \
    --customize-hook="mkdir -p \"\$1/home/vagrant/.ssh\" && cp $key \"\$1/home/vagrant/.ssh/authorized_keys\"" \
    --customize-hook='chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh && chmod 700 "$1/home/vagrant/.ssh"' \
    --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD:ALL" >"$1/etc/sudoers.d/vagrant" && chmod 440 "$1/etc/sudoers.d/vagrant"' \
    --customize-hook='printf "[Match]\nName=eth0\n\n[Network]\nDHCP=yes\n" >"$1/etc/systemd/network/10-eth0.network"' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd' \
    --customize-hook='echo "/dev/vda / ext4 rw,relatime 0 1" >"$1/etc/fstab"' \
    --customize-hook='echo mesh-box >"$1/etc/hostname"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook='printf "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n" >"$1/etc/ssh/sshd_config.d/box.conf"' \
    --customize-hook='printf "[Unit]\nDescription=ed25519 host key\nBefore=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key\n\n[Install]\nWantedBy=ssh.service\n" >"$1/etc/systemd/system/ssh-hostkey.service" && chroot "$1" systemctl enable ssh-hostkey.service' \
    --customize-hook='for u in e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer man-db.timer fstrim.timer; do chroot "$1" systemctl mask $u; done' \
    --customize-hook='cp "$1"/boot/vmlinuz-* "$1/../vmlinuz" && cp "$1"/boot/initrd.img-* "$1/../initrd.img"' \
    bookworm "$root"

truncate -s 2G "$work/root.raw"
mkfs.ext4 -q -F -L root -d "$root" "$work/root.raw"
qemu-img convert -c -O qcow2 "$work/root.raw" "$work/box.img"
rm -rf "$root" "$work/root.raw"
echo '{"provider":"libvirt","format":"qcow2","virtual_size":2}' >"$work/metadata.json"
cat >"$work/Vagrantfile" <<'VF'
# The box's own settings: boot its kernel and initrd directly, under software emulation.
Vagrant.configure("2") do |config|
  dir = File.dirname(__FILE__)
  config.vm.guest = :debian
  config.vm.provider :libvirt do |l|
    l.driver = "qemu"
    l.cpu_mode = "custom"
    l.cpu_model = "qemu64"
    l.kernel = File.join(dir, "vmlinuz")
    l.initrd = File.join(dir, "initrd.img")
    l.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
  end
end
VF
tar -C "$work" -cf "$work/mesh-bookworm.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
mkdir -p "$VAGRANT_HOME"
chmod 755 "$(dirname "$VAGRANT_HOME")" "$VAGRANT_HOME"
vagrant box add --force --name "$box" "$work/mesh-bookworm.box"
echo "build-box: $box added ($(du -h "$work/mesh-bookworm.box" | cut -f1))" >&2
