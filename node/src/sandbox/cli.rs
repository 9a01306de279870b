//! `mesh sandbox ...`: the clap wiring of sandbox mode, for the CLI to mount as a
//! subcommand (`Sandbox { #[command(subcommand)] cmd: SandboxCommand }`) and hand to [`run`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::demo::{self, DEFAULT_DIR, DEFAULT_PREFIX, SandboxLocation, SandboxOptions};

/// A demo cluster on this machine: each node a network namespace running its own daemon.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create the nodes, start a daemon on each and form a cluster.
    Up(UpArgs),
    /// Stop every daemon and remove the nodes and their files.
    Down(LocationArgs),
    /// List the nodes and whether their daemons run.
    Status(LocationArgs),
    /// Run a command inside a node, with MESH_HOST pointing at its daemon:
    /// `mesh sandbox exec node1 -- mesh node ls`.
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, short = 'n', default_value_t = 3)]
    pub nodes: usize,
    /// Only the cluster: no demo network and service.
    #[arg(long)]
    pub no_demo: bool,
    /// Number of managers (the first nodes) [default: min(3, nodes)].
    #[arg(long)]
    pub managers: Option<usize>,
    /// The mesh binary the daemons run [default: this binary].
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// A daemon config file (TOML) given to every node.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds each daemon gets to answer after it starts.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout: u64,
    #[command(flatten)]
    pub location: LocationArgs,
}

#[derive(Debug, Args)]
pub struct LocationArgs {
    /// Where the sandbox keeps its files.
    #[arg(long, env = "MESH_SANDBOX_DIR", default_value = DEFAULT_DIR)]
    pub sandbox_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The node: its name (node2) or number (2).
    pub node: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
    #[command(flatten)]
    pub location: LocationArgs,
}

impl LocationArgs {
    fn location(&self) -> SandboxLocation {
        SandboxLocation {
            dir: self.sandbox_dir.clone(),
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// Runs a sandbox command; `exec` exits with the status of the command it ran.
pub fn run(cmd: SandboxCommand) -> Result<ExitCode> {
    match cmd {
        SandboxCommand::Up(args) => {
            let binary = match args.binary {
                Some(b) => b,
                None => std::env::current_exe().context("find this binary")?,
            };
            let daemon_config = match &args.config {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("read daemon config {}", path.display()))?,
                None => String::new(),
            };
            let opts = SandboxOptions {
                managers: args.managers,
                daemon_config,
                location: args.location.location(),
                ready_timeout: Duration::from_secs(args.ready_timeout),
                demo_service: !args.no_demo,
                ..SandboxOptions::new(args.nodes, binary)
            };
            demo::up(&opts, &mut std::io::stdout().lock())?;
        }
        SandboxCommand::Down(args) => {
            demo::down(&args.location())?;
            println!("sandbox removed");
        }
        SandboxCommand::Status(args) => {
            println!(
                "{:<8} {:<12} {:<8} {:<20} DAEMON",
                "NODE", "ADDRESS", "ROLE", "NETNS"
            );
            for s in demo::status(&args.location())? {
                let daemon = s
                    .pid
                    .map_or_else(|| "down".to_owned(), |pid| format!("running (pid {pid})"));
                println!(
                    "{:<8} {:<12} {:<8} {:<20} {daemon}",
                    s.node.name, s.node.ip, s.node.role, s.node.netns
                );
            }
        }
        SandboxCommand::Exec(args) => {
            let status = demo::exec(&args.location.location(), &args.node, &args.command)?;
            return Ok(exit_code(status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code a shell would report for `status` (128 + signal when killed).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: SandboxCommand,
    }

    #[test]
    fn exec_takes_the_rest_of_the_line_with_or_without_dashes() {
        for line in [
            &[
                "t", "exec", "node1", "--", "mesh", "node", "ls", "--format", "json",
            ][..],
            &[
                "t", "exec", "node1", "mesh", "node", "ls", "--format", "json",
            ],
        ] {
            let Cli {
                cmd: SandboxCommand::Exec(args),
            } = Cli::parse_from(line)
            else {
                panic!()
            };
            assert_eq!(args.node, "node1");
            assert_eq!(
                args.command,
                ["mesh", "node", "ls", "--format", "json"].map(OsString::from)
            );
        }
    }

    #[test]
    fn up_defaults() {
        let Cli {
            cmd: SandboxCommand::Up(args),
        } = Cli::parse_from(["t", "up"])
        else {
            panic!()
        };
        assert_eq!((args.nodes, args.managers), (3, None));
    }
}
