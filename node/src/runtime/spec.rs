//! What a task runs: the launch spec the agent writes to `<task dir>/spec.json` and the shim
//! reads. A spec is never changed once written; a changed service gets new tasks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{Result, RuntimeError};

/// Longest task id accepted (it is a directory name, and appears in messages).
pub const MAX_TASK_ID_LEN: usize = 128;

/// Default cap of each output file (`output.log`, and `output.log.1` after a rotation).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// `PATH` of a task whose spec sets none (the task does not inherit the agent's environment).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The launch spec of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task id: the name of the task's directory under the runtime root
    /// (`[A-Za-z0-9_.-]`, at most [`MAX_TASK_ID_LEN`] bytes).
    pub id: String,
    /// Task name for people (`web.1`), in messages only.
    #[serde(default)]
    pub name: String,
    /// Program and arguments; the program is looked up in the task's `PATH`.
    pub argv: Vec<String>,
    /// Environment of the task process, on top of `PATH` and `HOME` defaults. The task does not
    /// inherit the agent's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Network namespace file to enter (`/run/netns/NAME`, ...). `None` runs the task in the
    /// shim's network namespace (host networking).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Content bind-mounted over `/etc/resolv.conf` in the task's mount namespace. `None`
    /// leaves the host's file visible.
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// Content bind-mounted over `/etc/hosts` in the task's mount namespace. `None` leaves the
    /// host's file visible.
    #[serde(default)]
    pub hosts: Option<String>,
    /// When the shim starts the process again after it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Time between SIGTERM and SIGKILL when the task is stopped.
    #[serde(with = "millis", rename = "stop_grace_ms", default = "default_grace")]
    pub stop_grace: Duration,
    /// Cap of each output file; the log rotates once at this size (so at most twice this is
    /// kept).
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
    /// A check the shim runs while the process runs; `None` = none.
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

/// Docker's HEALTHCHECK, run by the shim in the task's namespaces with `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub cmd: String,
    /// Between the end of one check and the start of the next (the first comes one interval
    /// after the process started).
    #[serde(with = "millis", rename = "interval_ms")]
    pub interval: Duration,
    /// A check still running after this fails (its process group is killed).
    #[serde(with = "millis", rename = "timeout_ms")]
    pub timeout: Duration,
    /// Failures in a row (outside the start period) that make the task unhealthy.
    pub retries: u32,
    /// After a start, failures do not count until this passed or a check succeeded.
    #[serde(with = "millis", rename = "start_period_ms")]
    pub start_period: Duration,
}

impl HealthCheck {
    /// Why this check cannot run, if it cannot.
    pub fn problem(&self) -> Option<String> {
        mesh_common::task::health_problem(
            &self.cmd,
            self.interval,
            self.timeout,
            self.retries,
            self.start_period,
        )
    }
}

/// Swarm's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Wait between an exit and the next start.
    #[serde(with = "millis", rename = "delay_ms")]
    pub delay: Duration,
    /// Most restarts (not counting the first start); 0 is unlimited.
    pub max_attempts: u32,
    /// Longest wait between restarts of a task that keeps failing quickly (see
    /// [`RestartPolicy::delay_after`]).
    #[serde(
        with = "millis",
        rename = "backoff_max_ms",
        default = "default_backoff_max"
    )]
    pub backoff_max: Duration,
}

/// A run shorter than this counts as a quick failure: the next restart waits longer.
pub const QUICK_RUN: Duration = Duration::from_secs(10);
/// The shortest backoff step, for policies without a delay.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// [`RestartPolicy::backoff_max`] unless configured.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

fn default_backoff_max() -> Duration {
    DEFAULT_BACKOFF_MAX
}

/// Which exits are followed by a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Every exit, whatever its status (Swarm's default).
    #[default]
    Any,
    /// Exits with a non-zero status or by a signal, and failures to start.
    OnFailure,
    /// Never.
    None,
}

impl Default for RestartPolicy {
    /// Swarm's default: restart on any exit after 5 s, without limit.
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: Duration::from_secs(5),
            max_attempts: 0,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl RestartPolicy {
    /// Whether a run that ended (`success`: status 0) is followed by another, given the
    /// restarts already made.
    pub fn should_restart(&self, success: bool, restarts: u32) -> bool {
        let wanted = match self.condition {
            RestartCondition::Any => true,
            RestartCondition::OnFailure => !success,
            RestartCondition::None => false,
        };
        wanted && (self.max_attempts == 0 || restarts < self.max_attempts)
    }

    /// The wait before the next start after `quick` runs in a row that each lasted less than
    /// [`QUICK_RUN`] (or did not start): the policy's delay for the first, then doubled for
    /// each more (from at least 100 ms), never more than `backoff_max`. A task that cannot
    /// start does not restart every second for ever.
    pub fn delay_after(&self, quick: u32) -> Duration {
        if quick <= 1 {
            return self.delay;
        }
        let factor = 1u32.checked_shl(quick - 1).unwrap_or(u32::MAX);
        self.delay
            .max(MIN_BACKOFF)
            .saturating_mul(factor)
            .min(self.backoff_max.max(self.delay))
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_log_max() -> u64 {
    DEFAULT_LOG_MAX_BYTES
}

impl TaskSpec {
    /// A spec running `argv` with the defaults: host networking, host resolv.conf and hosts,
    /// Swarm's restart policy, 10 s grace.
    pub fn new(id: impl Into<String>, argv: Vec<String>) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            name: String::new(),
            argv,
            env: Vec::new(),
            workdir: None,
            netns: None,
            resolv_conf: None,
            hosts: None,
            restart: RestartPolicy::default(),
            stop_grace: default_grace(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            health: None,
        }
    }

    /// Checks what the shim would otherwise fail on later, less clearly.
    pub fn validate(&self) -> Result<()> {
        validate_task_id(&self.id)?;
        let invalid = |reason: String| RuntimeError::InvalidSpec {
            id: self.id.clone(),
            reason,
        };
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(invalid("empty command".into()));
        }
        if let Some(arg) = self.argv.iter().find(|a| a.contains('\0')) {
            return Err(invalid(format!("argument {arg:?} contains NUL")));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {key:?} is not valid"
                )));
            }
        }
        if let Some(dir) = &self.workdir
            && !dir.is_absolute()
        {
            return Err(invalid(format!(
                "working directory {} is not absolute",
                dir.display()
            )));
        }
        if let Some(problem) = self.health.as_ref().and_then(HealthCheck::problem) {
            return Err(invalid(problem));
        }
        if self.log_max_bytes < 1024 {
            return Err(invalid(format!(
                "log_max_bytes {} is below 1024",
                self.log_max_bytes
            )));
        }
        Ok(())
    }
}

/// Checks that `id` can be a directory name under the runtime root.
pub fn validate_task_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > MAX_TASK_ID_LEN {
        "longer than 128 bytes"
    } else if id.starts_with('.') {
        "starts with '.'"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        "only letters, digits, '_', '-' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(RuntimeError::InvalidTaskId {
        id: id.to_owned(),
        reason,
    })
}

/// Durations as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_spec_json_round_trips_with_readable_keys() {
        let mut spec = TaskSpec::new("t1", vec!["sleep".into(), "1".into()]);
        spec.restart = RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay: Duration::from_millis(250),
            max_attempts: 3,
            ..RestartPolicy::default()
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["restart"]["condition"], "on-failure");
        assert_eq!(json["restart"]["delay_ms"], 250);
        assert_eq!(json["stop_grace_ms"], 10_000);
        let back: TaskSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn runtime_restart_policy_table() {
        let policy = |condition, max_attempts| RestartPolicy {
            condition,
            delay: Duration::ZERO,
            max_attempts,
            ..RestartPolicy::default()
        };
        use RestartCondition::*;
        // (condition, max_attempts, success, restarts so far, restart?)
        let table = [
            (Any, 0, true, 100, true),
            (Any, 0, false, 0, true),
            (Any, 2, true, 1, true),
            (Any, 2, true, 2, false),
            (OnFailure, 0, true, 0, false),
            (OnFailure, 0, false, 5, true),
            (OnFailure, 1, false, 1, false),
            (None, 0, false, 0, false),
            (None, 0, true, 0, false),
        ];
        for (condition, max, success, restarts, want) in table {
            assert_eq!(
                policy(condition, max).should_restart(success, restarts),
                want,
                "{condition:?} max={max} success={success} restarts={restarts}"
            );
        }
    }

    #[test]
    fn runtime_bad_ids_and_specs_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(
                    validate_task_id(bad),
                    Err(RuntimeError::InvalidTaskId { .. })
                ),
                "{bad:?}"
            );
        }
        validate_task_id("web.1.abc-DEF_9").unwrap();
        assert!(TaskSpec::new("t", vec![]).validate().is_err());
        assert!(TaskSpec::new("t", vec!["a\0b".into()]).validate().is_err());
        let mut spec = TaskSpec::new("t", vec!["true".into()]);
        spec.workdir = Some("relative".into());
        let err = spec.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid spec of task t: working directory relative is not absolute"
        );
    }

    #[test]
    fn a_task_failing_quickly_waits_longer_each_time_up_to_the_cap() {
        let p = RestartPolicy {
            delay: Duration::from_secs(1),
            ..RestartPolicy::default()
        };
        let waits: Vec<u64> = (1..=9).map(|q| p.delay_after(q).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let no_delay = RestartPolicy {
            delay: Duration::ZERO,
            ..RestartPolicy::default()
        };
        assert_eq!(
            no_delay.delay_after(1),
            Duration::ZERO,
            "the policy's own delay first"
        );
        assert_eq!(no_delay.delay_after(3), Duration::from_millis(400));
        assert_eq!(
            no_delay.delay_after(100),
            DEFAULT_BACKOFF_MAX,
            "no overflow"
        );
    }
}
