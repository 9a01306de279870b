//! Compiles the `.proto` files with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mesh/v1/objects.proto",
        "mesh/v1/raft.proto",
        "mesh/v1/ca.proto",
        "mesh/v1/dispatcher.proto",
        "mesh/v1/control.proto",
        "mesh/v1/local.proto",
        "mesh/v1/logs.proto",
        "mesh/v1/inspect.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
