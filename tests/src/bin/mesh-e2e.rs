//! The `mesh` binary as the end-to-end tests run it: see `mesh_tests::entry`.

fn main() -> std::process::ExitCode {
    mesh_tests::entry::main()
}
