//! Body of the `mesh-e2e` binary, the `mesh` the end-to-end tests run (a bin of this crate,
//! so tests get its path from `CARGO_BIN_EXE_mesh-e2e`; it is not named `mesh` so it does not
//! collide with the node crate's binary).

use std::process::ExitCode;

/// Runs the `mesh` CLI.
pub fn main() -> ExitCode {
    mesh_node::cli::main()
}
