fn main() -> std::process::ExitCode {
    mesh_node::cli::main()
}
