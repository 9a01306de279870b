//! Writes what the Debian package ships beside the binary, generated from the code so it
//! cannot drift from it: shell completions (bash, zsh, fish), man pages (`mesh.1` and one per
//! subcommand) and the commented default config.
//!
//! `cargo run -p mesh-node --example package_assets -- target/package-assets` (what
//! `node/debian/build-deb.sh` runs before `cargo deb`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use mesh_node::cli::Cli;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: package_assets OUTPUT_DIR")?,
    );
    let (completions, man) = (out.join("completions"), out.join("man"));
    for dir in [&out, &completions, &man] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut cmd = Cli::command();
    cmd.set_bin_name("mesh");
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "mesh", &completions)
            .with_context(|| format!("{shell} completions"))?;
    }
    clap_mangen::generate_to(cmd, &man).context("man pages")?;
    // One page per command a user types, not per `help` subcommand clap adds to each.
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.contains("-help-") || name.ends_with("-help.1") {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::write(
        out.join("mesh.toml"),
        mesh_node::config::commented_default(),
    )
    .context("mesh.toml")?;
    println!("package assets in {}", out.display());
    Ok(())
}
