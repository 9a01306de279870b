#!/usr/bin/env bash
# Builds the Debian package of mesh: target/debian/mesh_<version>_<arch>.deb.
#   node/debian/build-deb.sh              # release build
#   MESH_DEB_PROFILE=dev node/debian/build-deb.sh   # from the debug build (tests: no release build)
# Needs cargo-deb (cargo install cargo-deb --locked).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${MESH_DEB_PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
command -v cargo-deb >/dev/null || { echo "build-deb: cargo install cargo-deb --locked" >&2; exit 1; }
cargo build --locked --profile "$profile" -p mesh-node --bin mesh --example package_assets
rm -rf "target/$dir/package-assets"
"target/$dir/examples/package_assets" "target/$dir/package-assets"
cargo deb --locked -p mesh-node --no-build --profile "$profile" | tail -1
