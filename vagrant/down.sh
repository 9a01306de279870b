#!/usr/bin/env bash
# Destroys the VMs of vagrant/Vagrantfile (and the networks vagrant-libvirt made). The box stays.
set -euo pipefail
cd "$(dirname "$0")"
: "${VAGRANT_HOME:=/var/lib/mesh-vagrant/vagrant.d}"
export VAGRANT_HOME VAGRANT_DEFAULT_PROVIDER=libvirt
vagrant destroy -f
