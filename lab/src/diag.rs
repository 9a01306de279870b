//! Diagnostics of a lab, dumped when a wait times out or a test panics: for every namespace
//! the kernel's view (links, addresses, FDB, neighbors, nftables), and for every host the tail
//! of its daemon log and `mesh node ls` if the daemon answers. Shells out to iproute2 and nft
//! inside each namespace: this is dev tooling, not product code.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use mesh_dataplane::netns::Netns;

use crate::process::run_with_timeout;

/// Time allowed to each diagnostic command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of each daemon log shown.
pub const LOG_TAIL_LINES: usize = 40;

/// The kernel's view of namespace `ns`, one titled section per command.
pub fn netns_report(ns: &Netns) -> String {
    let commands: [&[&str]; 5] = [
        &["ip", "-d", "link"],
        &["ip", "addr"],
        &["bridge", "fdb"],
        &["ip", "neigh"],
        &["nft", "list", "ruleset"],
    ];
    let mut out = String::new();
    for argv in commands {
        let _ = writeln!(out, "--- {}", argv.join(" "));
        out.push_str(&run_in(ns, argv));
    }
    out
}

/// Output of `argv` run inside `ns`, or why it could not run.
pub(crate) fn run_in(ns: &Netns, argv: &[&str]) -> String {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    if let Err(e) = ns.enter_on_exec(&mut cmd) {
        return format!("(cannot enter: {e:#})\n");
    }
    match run_with_timeout(cmd, COMMAND_TIMEOUT) {
        Ok(out) => {
            let mut text = out.stdout;
            if !out.stderr.trim().is_empty() {
                text.push_str(&out.stderr);
            }
            if !out.status.success() {
                let _ = writeln!(text, "({})", out.status);
            }
            text
        }
        Err(e) => format!("({e:#})\n"),
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> &str {
    if lines == 0 {
        return "";
    }
    match text
        .trim_end_matches('\n')
        .rmatch_indices('\n')
        .nth(lines - 1)
    {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail("", 3), "");
    }
}
