//! What a `mesh` binary is: its release, the API it speaks, and how it was built. The CLI
//! shows its own ([`BuildInfo::this_binary`]) beside the daemon's, which the daemon reports
//! over its local API (`Version`).

use mesh_proto::VersionResponse;
use serde_json::{Value, json};

/// Longest field of a daemon's answer that is shown; the rest is cut.
const MAX_FIELD: usize = 128;

/// A binary's version and build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    pub api_version: String,
    /// Empty when the build did not record it (`MESH_GIT_COMMIT` unset at compile time).
    pub git_commit: String,
    pub rust_version: String,
    pub os: String,
    pub arch: String,
}

impl BuildInfo {
    /// This binary's.
    pub fn this_binary() -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: mesh_proto::API_VERSION.into(),
            git_commit: option_env!("MESH_GIT_COMMIT").unwrap_or_default().into(),
            rust_version: env!("MESH_RUSTC_VERSION").into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }

    /// A daemon's, as it answered: every field cut to [`MAX_FIELD`] characters and stripped
    /// of control characters, so an odd answer cannot garble the terminal.
    pub fn from_daemon(r: &VersionResponse) -> BuildInfo {
        BuildInfo {
            version: printable(&r.version),
            api_version: printable(&r.api_version),
            git_commit: printable(&r.git_commit),
            rust_version: printable(&r.rust_version),
            os: printable(&r.os),
            arch: printable(&r.arch),
        }
    }

    pub fn to_proto(&self) -> VersionResponse {
        VersionResponse {
            version: self.version.clone(),
            api_version: self.api_version.clone(),
            git_commit: self.git_commit.clone(),
            rust_version: self.rust_version.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
        }
    }

    /// The JSON `mesh version --format json` prints for one side (keys as Docker's where
    /// they mean the same).
    pub fn to_json(&self) -> Value {
        json!({
            "Version": self.version,
            "ApiVersion": self.api_version,
            "GitCommit": self.git_commit,
            "RustVersion": self.rust_version,
            "Os": self.os,
            "Arch": self.arch,
        })
    }
}

fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemons_answer_is_cut_and_cleaned() {
        let r = VersionResponse {
            version: format!("1.0\x1b[2J{}", "9".repeat(500)),
            os: "linux\n".into(),
            ..Default::default()
        };
        let b = BuildInfo::from_daemon(&r);
        assert!(b.version.starts_with("1.0[2J999"), "{:?}", b.version);
        assert_eq!(b.version.chars().count(), MAX_FIELD);
        assert_eq!(b.os, "linux");
        let me = BuildInfo::this_binary();
        assert_eq!(BuildInfo::from_daemon(&me.to_proto()), me);
        assert!(
            !me.rust_version.is_empty(),
            "the build script records rustc"
        );
    }
}
