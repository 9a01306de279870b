//! Cluster operations and observations through the real CLI, as an operator would type them:
//! who leads, what every node lists, writes that must succeed or be refused with one clear
//! line.
//!
//! Every CLI call here is bounded ([`Host::cli_with_timeout`]): a hang is a failure with a
//! message, never a stuck test.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{CmdOutput, Host, Lab, NodeRow, Poll, info, nodes};

/// How long one CLI call may take in these helpers. Longer than the fast write timeout (a
/// write refused for lack of quorum answers after it), short enough that a hang fails fast.
pub const CLI_BOUND: Duration = Duration::from_secs(10);

/// A CLI call that failed the way the CLI promises to fail: exit status 1 and one line
/// `error: <message>` on stderr.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The message after `error: `.
    pub message: String,
    /// How long the command took.
    pub took: Duration,
}

/// Runs `mesh ARGS` on `host` and expects a refusal (see [`Refusal`]): fails if the command
/// succeeded, exited otherwise, printed more than one line on stderr, or took longer than
/// `bound`.
pub fn refused<I, S>(host: &Host, args: I, bound: Duration) -> Result<Refusal>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let start = Instant::now();
    let out = host.cli_with_timeout(args, bound)?;
    let took = start.elapsed();
    refusal_of(&out, took)
}

/// Checks that `out` is a refusal (see [`Refusal`]).
pub fn refusal_of(out: &CmdOutput, took: Duration) -> Result<Refusal> {
    ensure!(
        !out.success(),
        "expected a refusal, the command succeeded: {out}"
    );
    ensure!(
        out.status.code() == Some(1),
        "expected exit status 1: {out}"
    );
    let stderr = out.stderr.trim_end();
    ensure!(
        stderr.lines().count() == 1,
        "expected exactly one line on stderr: {out}"
    );
    let message = stderr
        .strip_prefix("error: ")
        .with_context(|| format!("expected `error: <message>` on stderr: {out}"))?;
    ensure!(!message.trim().is_empty(), "empty error message: {out}");
    Ok(Refusal {
        message: message.to_owned(),
        took,
    })
}

/// Whether `message` mentions any of `words` (case-insensitive).
pub fn mentions(message: &str, words: &[&str]) -> bool {
    let lower = message.to_ascii_lowercase();
    words
        .iter()
        .any(|w| lower.contains(&w.to_ascii_lowercase()))
}

/// `mesh join-token ROLE -q` on `host`: the token.
pub fn join_token(host: &Host, role: &str) -> Result<String> {
    let out = host
        .cli_with_timeout(["join-token", role, "-q"], CLI_BOUND)?
        .ok_stdout()?;
    let token = out.trim().to_owned();
    ensure!(token.starts_with("MESH-1-"), "odd token {token:?}");
    Ok(token)
}

/// `mesh join-token ROLE -q --rotate` on `host`: a raft write. Returns the command's output,
/// whatever it was (tests retry it or expect it refused).
pub fn rotate_token(host: &Host, role: &str) -> Result<CmdOutput> {
    host.cli_with_timeout(["join-token", role, "-q", "--rotate"], CLI_BOUND)
}

/// Rotates the worker token on `host`, retrying until it succeeds or `deadline` passes;
/// returns the new token and when it was committed.
pub fn rotate_until_ok(lab: &Lab, host: &Host, deadline: Duration) -> Result<(String, Instant)> {
    lab.wait_for(
        &format!(
            "a write (join-token rotation) to succeed on {}",
            host.name()
        ),
        deadline,
        || {
            let out = rotate_token(host, "worker")?;
            Ok(if out.success() {
                Poll::Ready((out.stdout.trim().to_owned(), Instant::now()))
            } else {
                Poll::Pending(out.to_string())
            })
        },
    )
}

/// `mesh join --token T --advertise-addr <host ip> MANAGER` on `host`, bounded.
pub fn join(host: &Host, token: &str, manager: &str) -> Result<CmdOutput> {
    host.cli_with_timeout(
        [
            "join",
            "--token",
            token,
            "--advertise-addr",
            &host.ip().to_string(),
            manager,
        ],
        CLI_BOUND + crate::FAST_JOIN_TIMEOUT,
    )
}

/// `mesh init --advertise-addr <host ip>` on `host`; returns the new node id.
pub fn init(host: &Host) -> Result<String> {
    host.cli_with_timeout(
        ["init", "--advertise-addr", &host.ip().to_string()],
        CLI_BOUND,
    )?
    .ok_stdout()
    .with_context(|| format!("mesh init on {}", host.name()))?;
    node_id(host)
}

/// The node id `host` reports in `mesh info` (empty when it is in no cluster).
pub fn node_id(host: &Host) -> Result<String> {
    Ok(info(host)?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// The raft term `host` reports (managers only; 0 on workers).
pub fn raft_term(host: &Host) -> Result<u64> {
    info(host)?["raft"]["term"]
        .as_u64()
        .context("info has no raft.term")
}

/// The raft commit index `host` reports (managers only).
pub fn commit_index(host: &Host) -> Result<u64> {
    info(host)?["raft"]["commit_index"]
        .as_u64()
        .context("info has no raft.commit_index")
}

/// Waits until `host` has applied the raft log up to `index`.
pub fn wait_applied(lab: &Lab, host: &Host, index: u64, deadline: Duration) -> Result<()> {
    lab.wait_for(
        &format!("{} to apply index {index}", host.name()),
        deadline,
        || {
            let applied = info(host)?["raft"]["applied_index"].as_u64().unwrap_or(0);
            Ok(if applied >= index {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("applied {applied}"))
            })
        },
    )
}

/// The manager among `candidates` that says it is the raft leader (its `info` names itself as
/// leader). `None` if none does, an error if two do.
pub fn leader_among<'a>(candidates: &[&'a Host]) -> Result<Option<&'a Host>> {
    let mut found = None;
    for host in candidates {
        if !host.is_running() {
            continue;
        }
        let Ok(i) = info(host) else { continue };
        let me = i["node_id"].as_str().unwrap_or_default();
        if !me.is_empty()
            && i["leader_id"].as_str() == Some(me)
            && let Some(other) = found.replace(*host)
        {
            bail!(
                "two nodes say they lead: {} and {}",
                other.name(),
                host.name()
            );
        }
    }
    Ok(found)
}

/// Waits until exactly one of `candidates` is the leader *and* every other running candidate
/// names it as leader; returns it.
pub fn wait_leader<'a>(lab: &Lab, candidates: &[&'a Host], deadline: Duration) -> Result<&'a Host> {
    lab.wait_for(
        "one leader that every running manager agrees on",
        deadline,
        || {
            let Some(leader) = leader_among(candidates)? else {
                return Ok(Poll::Pending("no leader".to_owned()));
            };
            let id = node_id(leader)?;
            for host in candidates.iter().filter(|h| h.is_running()) {
                let said = info(host)?["leader_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if said != id {
                    return Ok(Poll::Pending(format!(
                        "{} leads, {} says {said:?}",
                        leader.name(),
                        host.name()
                    )));
                }
            }
            Ok(Poll::Ready(leader))
        },
    )
}

/// The first `n` hosts of the lab (the managers of [`crate::cluster`]).
pub fn first(lab: &Lab, n: usize) -> Vec<&Host> {
    lab.hosts().iter().take(n).collect()
}

/// `mesh node ls` on each of `observers`, as `(observer, rows)`.
pub fn views<'a>(observers: &[&'a Host]) -> Result<Vec<(&'a Host, Vec<NodeRow>)>> {
    observers
        .iter()
        .map(|h| {
            nodes(h)
                .with_context(|| format!("node ls on {}", h.name()))
                .map(|rows| (*h, rows))
        })
        .collect()
}

/// Waits until `check` holds for the `node ls` of every host in `observers`; `check` says
/// what is wrong with one view, or `None` when it is right.
pub fn wait_every_view(
    lab: &Lab,
    what: &str,
    observers: &[&Host],
    deadline: Duration,
    mut check: impl FnMut(&Host, &[NodeRow]) -> Option<String>,
) -> Result<()> {
    lab.wait_for(what, deadline, || {
        for (host, rows) in views(observers)? {
            if let Some(wrong) = check(host, &rows) {
                return Ok(Poll::Pending(format!("{}: {wrong}", host.name())));
            }
        }
        Ok(Poll::Ready(()))
    })
}

/// The row of `hostname` in `rows`.
pub fn row<'a>(rows: &'a [NodeRow], hostname: &str) -> Option<&'a NodeRow> {
    rows.iter().find(|r| r.hostname == hostname)
}

/// The set of ids in `rows`.
pub fn ids(rows: &[NodeRow]) -> BTreeSet<String> {
    rows.iter().map(|r| r.id.clone()).collect()
}

/// A short summary of rows for messages: `node1:ready:manager:leader ...`.
pub fn summary(rows: &[NodeRow]) -> String {
    let mut parts: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}:{}:{}:{}",
                r.hostname,
                r.status,
                r.role,
                r.manager_status()
            )
        })
        .collect();
    parts.sort();
    parts.join(" ")
}

/// Every running host of the lab.
pub fn running(lab: &Lab) -> Vec<&Host> {
    lab.hosts().iter().filter(|h| h.is_running()).collect()
}

/// Every host but `except`.
pub fn others<'a>(lab: &'a Lab, except: &[&Host]) -> Vec<&'a Host> {
    lab.hosts()
        .iter()
        .filter(|h| except.iter().all(|e| e.name() != h.name()))
        .collect()
}
