//! The task-runtime subcommands of `mesh` as a standalone binary.
//!
//! The runtime's tests need a binary that answers `task-shim` (the shim re-executes its own
//! binary) and `whoami`; a unit-test binary cannot, and the `mesh` binary gets these
//! subcommands only when the CLI wires them. This example wires them exactly as the CLI
//! should, plus two helpers for tests and trying things out:
//! - `exec --pid PID -- CMD...`: `mesh exec` once the agent has answered the pid;
//! - `start --root DIR --spec FILE [--hold]`: start one task with a `TaskRuntime` (and, with
//!   `--hold`, stay alive until killed, like an agent).
//!
//! `cargo test` builds it; `cargo run -p mesh-node --example runtime_cli -- whoami --port 8080`
//! runs a whoami server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_node::runtime::{TaskRuntime, TaskShimArgs, TaskSpec};
use mesh_node::whoami::WhoamiArgs;

#[derive(Parser, Debug)]
#[command(name = "runtime_cli")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The per-task supervisor (internal).
    #[command(hide = true)]
    TaskShim(TaskShimArgs),
    /// A small server answering with its task name, addresses and the client's address.
    Whoami(WhoamiArgs),
    /// Run a command in the namespaces of the task process PID.
    Exec {
        #[arg(long)]
        pid: i32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start the task described by a spec.json with a TaskRuntime rooted at --root.
    Start {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        spec: PathBuf,
        /// Stay alive after starting (until killed), like an agent.
        #[arg(long)]
        hold: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("MESH_LOG").unwrap_or_else(|_| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::TaskShim(args) => mesh_node::runtime::shim::run(args),
        Command::Whoami(args) => mesh_node::whoami::run(args),
        Command::Exec { pid, command } => mesh_node::runtime::run_exec(pid, &command),
        Command::Start { root, spec, hold } => start(root, spec, hold),
    }
}

fn start(root: PathBuf, spec: PathBuf, hold: bool) -> ExitCode {
    let result = (|| -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&spec)?;
        let spec: TaskSpec = serde_json::from_str(&text)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tasks = TaskRuntime::new(root, std::env::current_exe()?);
        runtime.block_on(tasks.start(spec))?;
        println!("started");
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    if hold {
        loop {
            std::thread::park();
        }
    }
    ExitCode::SUCCESS
}
