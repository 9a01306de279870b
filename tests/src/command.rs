//! Running a host command from a test: its standard output, or an error with what it printed.

use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

/// Runs `cmd`; its stdout if it exits 0, else an error with its stderr and stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ok_stdout(cmd, out)
}

/// The stdout of `cmd`'s finished run `out` if it exited 0, else an error with its output.
pub fn ok_stdout(cmd: &Command, out: Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
