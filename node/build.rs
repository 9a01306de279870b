//! Records what built this binary, for `mesh version`: the compiler's version
//! (`MESH_RUSTC_VERSION`). The commit is taken from `MESH_GIT_COMMIT` at compile time when
//! the build sets it (`MESH_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`); no git is
//! run here, so a build outside a checkout works the same.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().trim_start_matches("rustc ").to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=MESH_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MESH_GIT_COMMIT");
}
