#!/usr/bin/env bash
# Builds mesh and starts a cluster on this machine: each node is a network
# namespace running its own `mesh daemon`. Run as root.
#   scripts/sandbox.sh            # 3 nodes
#   scripts/sandbox.sh --nodes 5
# Then: target/release/mesh sandbox exec node1 -- mesh node ls
# Stop: target/release/mesh sandbox down
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p mesh-node
exec target/release/mesh sandbox up "$@"
