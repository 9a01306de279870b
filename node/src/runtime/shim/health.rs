//! Health checks of a running task, as Docker runs a HEALTHCHECK: `/bin/sh -c CMD` in the
//! task's namespaces, one interval after the start and then one interval after each check
//! ends; exit status 0 passes. A check that outlives its timeout fails and its process group
//! is killed. Failures during the start period do not count until a check has passed;
//! `retries` counted failures in a row make the task unhealthy, and the supervisor then stops
//! the run (its restart policy decides what follows).
//!
//! [`next`] is the state machine, pure; [`watch`] drives it with real checks.

use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use mesh_dataplane::netns::Netns;

use super::launch::{self, Prepared};
use crate::runtime::spec::{HealthCheck, TaskSpec};
use crate::runtime::state::{Health, HealthStatus, MAX_HEALTH_OUTPUT, TaskDir, TaskState};

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Its output, or why it could not run.
    Failed(String),
}

/// The health at the start of a run.
pub fn initial() -> Health {
    Health {
        status: HealthStatus::Starting,
        failing_streak: 0,
        last_failure: String::new(),
    }
}

/// The health after one check. `since_start` is the time since the run started.
pub fn next(h: &Health, outcome: Outcome, since_start: Duration, check: &HealthCheck) -> Health {
    match outcome {
        Outcome::Passed => Health {
            status: HealthStatus::Healthy,
            failing_streak: 0,
            last_failure: String::new(),
        },
        Outcome::Failed(output) => {
            let last_failure = cut(&output);
            // Until a check passed, failures in the start period do not count.
            if h.status == HealthStatus::Starting && since_start < check.start_period {
                return Health {
                    last_failure,
                    ..h.clone()
                };
            }
            let failing_streak = h.failing_streak.saturating_add(1);
            let status = if failing_streak >= check.retries {
                HealthStatus::Unhealthy
            } else {
                h.status
            };
            Health {
                status,
                failing_streak,
                last_failure,
            }
        }
    }
}

/// `text` trimmed, on one line, at most [`MAX_HEALTH_OUTPUT`] bytes (on a char boundary).
fn cut(text: &str) -> String {
    let one_line = text.trim().replace(['\n', '\r'], " ");
    let mut end = one_line.len().min(MAX_HEALTH_OUTPUT);
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    one_line[..end].to_owned()
}

/// Runs checks while the process runs, recording each change of health in `state`; returns
/// once the task is unhealthy. Cancel-safe between checks (a check cancelled mid-run leaves
/// its process group to the parent-death signal and the group kill of the run).
pub async fn watch(
    spec: &TaskSpec,
    prepared: &Prepared,
    dir: &TaskDir,
    state: &mut TaskState,
    started: Instant,
) {
    let Some(check) = spec.health.as_ref() else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(check.interval).await;
        let outcome = run_check(spec, prepared, check).await;
        let before = state.health.clone().unwrap_or_else(initial);
        let after = next(&before, outcome, started.elapsed(), check);
        if after != before {
            if after.status != before.status {
                tracing::info!(task = %spec.id, health = ?after.status, last_failure = %after.last_failure, "health changed");
            }
            state.health = Some(after.clone());
            if let Err(e) = dir.write_state(state) {
                tracing::error!(task = %spec.id, error = %format!("{e:#}"), "cannot record the task state");
            }
        }
        if after.status == HealthStatus::Unhealthy {
            return;
        }
    }
}

/// One check, to its end or its timeout.
async fn run_check(spec: &TaskSpec, prepared: &Prepared, check: &HealthCheck) -> Outcome {
    let netns = match &spec.netns {
        Some(path) => match Netns::open_path(&path.display().to_string(), path) {
            Ok(ns) => Some(ns),
            Err(e) => return Outcome::Failed(format!("cannot enter the task's network: {e:#}")),
        },
        None => None,
    };
    let mut child = match launch::check_command(spec, prepared, netns.as_ref(), &check.cmd)
        .and_then(|cmd| tokio::process::Command::from(cmd).spawn())
    {
        Ok(child) => child,
        Err(e) => return Outcome::Failed(format!("cannot start the health check: {e}")),
    };
    drop(netns);
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let ran = tokio::time::timeout(check.timeout, async {
        let (out, err, status) =
            tokio::join!(read_bounded(stdout), read_bounded(stderr), child.wait());
        (out, err, status)
    })
    .await;
    // Whatever the check left behind (it ran in its own process group).
    if let Some(pid) = pid {
        let _ = signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    match ran {
        Ok((_, _, Ok(status))) if status.success() => Outcome::Passed,
        Ok((out, err, Ok(status))) => {
            let output = [out, err].concat();
            let output = String::from_utf8_lossy(&output);
            Outcome::Failed(if output.trim().is_empty() {
                format!("health check {status}")
            } else {
                output.into_owned()
            })
        }
        Ok((_, _, Err(e))) => Outcome::Failed(format!("cannot wait for the health check: {e}")),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Outcome::Failed(format!(
                "health check timed out after {}",
                humantime::format_duration(check.timeout)
            ))
        }
    }
}

/// Everything `r` says, keeping only the first [`MAX_HEALTH_OUTPUT`] bytes (the rest is read
/// and dropped, so a chatty check never blocks on a full pipe).
async fn read_bounded(r: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_HEALTH_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period: u64) -> HealthCheck {
        HealthCheck {
            cmd: "true".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_secs(start_period),
        }
    }

    fn fail() -> Outcome {
        Outcome::Failed("connection refused\n".into())
    }

    #[test]
    fn retries_failures_in_a_row_make_a_task_unhealthy_and_a_pass_heals_it() {
        let c = check(3, 0);
        let s = Duration::from_secs(5);
        let h = next(&initial(), fail(), s, &c);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 1));
        assert_eq!(h.last_failure, "connection refused");
        let h = next(&h, Outcome::Passed, s, &c);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
        let h = next(&h, fail(), s, &c);
        let h = next(&h, fail(), s, &c);
        assert_eq!(h.status, HealthStatus::Healthy, "two of three failures");
        let h = next(&h, fail(), s, &c);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Unhealthy, 3));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_check_passed() {
        let c = check(1, 10);
        let early = Duration::from_secs(2);
        let h = next(&initial(), fail(), early, &c);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        let h = next(&h, fail(), Duration::from_secs(11), &c);
        assert_eq!(h.status, HealthStatus::Unhealthy, "after the start period");
        // A pass ends the start period early: the next failure counts.
        let h = next(&initial(), Outcome::Passed, early, &c);
        let h = next(&h, fail(), early, &c);
        assert_eq!(h.status, HealthStatus::Unhealthy);
    }

    #[test]
    fn output_is_kept_short_and_on_one_line() {
        let long = "é".repeat(400);
        assert!(cut(&long).len() <= MAX_HEALTH_OUTPUT);
        assert_eq!(cut("a\nb\r\n"), "a b");
    }
}
