//! `mesh service logs`: the output of a service's tasks (or of one task), read by a manager
//! from the nodes that run them.

use std::io::{self, Write};

use anyhow::bail;
use clap::Args;
use mesh_proto::control_client::ControlClient;
use mesh_proto::{ServiceLogsMessage, ServiceLogsRequest};
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// A service (name, id or id prefix) or one task (`api.2`, a task id or id prefix).
    pub target: String,
    /// Keep printing new output, also of tasks that start later, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines of each task: a number, or `all` (with --follow, tasks that
    /// start later are shown from their first line).
    #[arg(long, short = 'n', default_value = "all")]
    pub tail: String,
    /// Print each line's time (RFC 3339, UTC).
    #[arg(long, short = 't')]
    pub timestamps: bool,
    /// Print the lines only, without the task and node they come from.
    #[arg(long)]
    pub raw: bool,
}

fn parse_tail(text: &str) -> anyhow::Result<Option<u64>> {
    if text == "all" {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(n) => Ok(Some(n)),
        Err(_) => bail!("--tail: {text:?} is not a number of lines >= 0 or `all`"),
    }
}

/// Where each line goes and how it is labelled.
struct Printer {
    timestamps: bool,
    raw: bool,
    /// Width of the widest label so far, for aligned columns.
    width: usize,
}

/// One line of output, with what labels it.
struct Line<'a> {
    msg: &'a ServiceLogsMessage,
    time: &'a str,
    stderr: bool,
    text: &'a [u8],
}

impl Printer {
    fn label(msg: &ServiceLogsMessage) -> String {
        let id = &msg.task_id[..msg.task_id.len().min(12)];
        format!("{}.{id}@{}", msg.task_name, msg.node_hostname)
    }

    fn print(&mut self, line: &Line) -> io::Result<()> {
        let mut out = Vec::with_capacity(line.text.len() + 64);
        if !self.raw {
            let label = Self::label(line.msg);
            self.width = self.width.max(label.len());
            write!(out, "{label:<w$} | ", w = self.width)?;
        }
        if self.timestamps {
            write!(out, "{} ", line.time)?;
        }
        out.extend_from_slice(line.text);
        out.push(b'\n');
        if line.stderr {
            io::stderr().lock().write_all(&out)
        } else {
            io::stdout().lock().write_all(&out)
        }
    }
}

/// Prints what the stream brings. Without `--follow` everything is gathered first and printed
/// in time order across tasks; following, lines are printed as they come.
pub async fn run(control: &mut ControlClient<Channel>, args: LogsArgs) -> anyhow::Result<()> {
    let tail = parse_tail(&args.tail)?;
    let mut stream = control
        .service_logs(ServiceLogsRequest {
            target: args.target.clone(),
            follow: args.follow,
            tail,
        })
        .await?
        .into_inner();
    let mut printer = Printer {
        timestamps: args.timestamps,
        raw: args.raw,
        width: 0,
    };
    let mut gathered: Vec<ServiceLogsMessage> = Vec::new();
    let mut missing = 0usize;
    while let Some(msg) = stream.message().await? {
        if !msg.error.is_empty() {
            missing += 1;
            eprintln!("warning: no output of {}: {}", msg.task_name, msg.error);
            continue;
        }
        if args.follow {
            if !printed(print_all(&mut printer, std::slice::from_ref(&msg)))? {
                return Ok(());
            }
        } else {
            gathered.push(msg);
        }
    }
    if !printed(print_all(&mut printer, &gathered))? {
        return Ok(());
    }
    if missing > 0 {
        bail!("the output of {missing} task(s) could not be read (see the warnings above)");
    }
    Ok(())
}

/// Whether printing went through: `false` when whoever reads our output went away
/// (`mesh service logs api | head`), which ends the command quietly.
fn printed(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

/// Prints the records of `messages` in time order (a stable sort: a task's own records stay
/// in the order it wrote them).
fn print_all(printer: &mut Printer, messages: &[ServiceLogsMessage]) -> io::Result<()> {
    let mut lines: Vec<Line> = messages
        .iter()
        .flat_map(|msg| {
            msg.records.iter().map(move |r| Line {
                msg,
                time: &r.time,
                stderr: r.stream == "stderr",
                text: &r.text,
            })
        })
        .collect();
    lines.sort_by(|a, b| a.time.cmp(b.time));
    if !printer.raw {
        printer.width = lines
            .iter()
            .map(|l| Printer::label(l.msg).len())
            .fold(printer.width, usize::max);
    }
    for line in &lines {
        printer.print(line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_a_count_or_all() {
        assert_eq!(parse_tail("all").unwrap(), None);
        assert_eq!(parse_tail("0").unwrap(), Some(0));
        assert_eq!(parse_tail("25").unwrap(), Some(25));
        for bad in ["-1", "x", ""] {
            let err = parse_tail(bad).unwrap_err().to_string();
            assert!(err.starts_with("--tail:"), "{bad}: {err}");
        }
    }
}
