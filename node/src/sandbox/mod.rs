//! Sandbox mode, `mesh sandbox up|down|status|exec`: a demo cluster on this machine, built as a
//! detached lab of [`mesh_lab`] (hosts are network namespaces wired to one switch namespace,
//! each running the real `mesh` daemon).
//!
//! # Layout
//! - [`demo`]: [`up`], [`down`], [`status`], [`exec`]: the sandbox's lifecycle and its state
//!   file.
//! - [`cli`]: the clap wiring of `mesh sandbox`.

pub mod cli;
pub mod demo;

pub use demo::{NodeStatus, SandboxLocation, SandboxNode, SandboxOptions, down, exec, status, up};
