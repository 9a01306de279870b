#!/usr/bin/env bash
# Brings up the VMs of vagrant/Vagrantfile and forms a cluster: node1 inits, the others join
# as workers. Run as root. Deadlines, no fixed sleeps.
#   vagrant/up.sh            then: vagrant/up.sh is idempotent; vagrant/down.sh destroys all
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${VAGRANT_HOME:=/var/lib/mesh-vagrant/vagrant.d}"
export VAGRANT_HOME VAGRANT_DEFAULT_PROVIDER=libvirt
cd "$here"
N=${MESH_VMS:-3}
NET=${MESH_VM_NET:-192.168.56}

# No systemd on the machine: start libvirt's daemons by hand (a killed daemon leaves a zombie
# that plain pgrep would match, hence -r).
pgrep -r S,R,D -x virtlogd >/dev/null || virtlogd -d
pgrep -r S,R,D -x libvirtd >/dev/null || libvirtd -d
# Root-only /dev/kvm makes libvirt re-probe QEMU on every call (minutes per `vagrant up`).
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
"$here/build-box.sh"
if [ -z "${MESH_DEB:-}" ] && ! ls "$here"/../target/debian/mesh_*.deb >/dev/null 2>&1; then
    echo "up: build the package first (node/debian/build-deb.sh) or set MESH_DEB" >&2
    exit 1
fi

vagrant up --no-parallel
on() { local n=$1; shift; vagrant ssh "$n" -c "sudo $*" -- -q 2>/dev/null; }

wait_until() { # SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then echo "up: timed out: $what" >&2; return 1; fi
        sleep 1
    done
}
for i in $(seq 1 "$N"); do wait_until 120 "mesh on node$i" on "node$i" mesh info; done
if ! grep -q '^Node ID:' <<<"$(on node1 mesh info)"; then
    on node1 mesh init --advertise-addr "$NET.11"
fi
token=$(on node1 mesh join-token worker -q | tr -d '\r')
for i in $(seq 2 "$N"); do
    if ! grep -q '^Node ID:' <<<"$(on "node$i" mesh info)"; then
        on "node$i" mesh join --token "$token" --advertise-addr "$NET.$((10 + i))" "$NET.11"
    fi
done
ready() { [ "$(on node1 mesh node ls | grep -c ' ready ')" -eq "$N" ]; }
wait_until 120 "$N ready nodes" ready
on node1 mesh node ls
# The demo: a service on an overlay network, published on port 8080 of every VM.
if ! on node1 mesh service inspect whoami >/dev/null 2>&1; then
    on node1 mesh network inspect demo >/dev/null 2>&1 || on node1 mesh network create demo
    on node1 mesh service create --name whoami --replicas "$N" --network demo \
        --publish published=8080,target=80 -- mesh whoami --port 80
fi
on node1 mesh service ls
echo "up: try curl http://$NET.11:8080/ (any VM's address answers)"
