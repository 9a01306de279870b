//! Waiting for a condition by polling, with a deadline and a useful message on timeout.
//!
//! Tests never sleep a fixed time: they poll what they expect until a deadline. A check
//! returns `bool`, `Option<T>` or [`Poll<T>`] (which can say what it saw), wrapped in
//! `Result`: an error does not end the wait, it is recorded as the last observation (a daemon
//! that does not answer *yet* is the normal case). Deadlines are multiplied by the
//! `MESH_TEST_PATIENCE` environment variable (a float, default 1) on slow machines.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// The outcome of one check.
#[derive(Debug)]
pub enum Poll<T> {
    /// The condition holds; the wait returns this value.
    Ready(T),
    /// Not yet; the string says what was observed (shown if the wait times out).
    Pending(String),
    /// Never: stop waiting now (say, the daemon being waited for has exited) and fail with
    /// this observation.
    Fail(String),
}

/// What a check may return.
pub trait IntoPoll<T> {
    fn into_poll(self) -> Poll<T>;
}

impl IntoPoll<()> for bool {
    fn into_poll(self) -> Poll<()> {
        if self {
            Poll::Ready(())
        } else {
            Poll::Pending("false".to_owned())
        }
    }
}

impl<T> IntoPoll<T> for Option<T> {
    fn into_poll(self) -> Poll<T> {
        match self {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending("none".to_owned()),
        }
    }
}

impl<T> IntoPoll<T> for Poll<T> {
    fn into_poll(self) -> Poll<T> {
        self
    }
}

/// The multiplier of every deadline, from `MESH_TEST_PATIENCE` (default 1).
pub fn patience() -> f64 {
    std::env::var("MESH_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|p| p.is_finite() && *p > 0.0)
        .unwrap_or(1.0)
}

/// `d` multiplied by [`patience`].
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(patience())
}

/// Polls `check` until it is ready or `deadline` (scaled by [`patience`]) has passed.
pub fn wait_for<T, R: IntoPoll<T>>(
    what: &str,
    deadline: Duration,
    check: impl FnMut() -> Result<R>,
) -> Result<T> {
    wait_for_with(what, deadline, check, String::new)
}

/// [`wait_for`], appending `diagnostics()` to the error on timeout.
pub fn wait_for_with<T, R: IntoPoll<T>>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<R>,
    diagnostics: impl FnOnce() -> String,
) -> Result<T> {
    let deadline = scaled(deadline);
    let start = Instant::now();
    let mut interval = Duration::from_millis(10);
    loop {
        let last = match check() {
            Ok(r) => match r.into_poll() {
                Poll::Ready(v) => return Ok(v),
                Poll::Pending(seen) => seen,
                Poll::Fail(seen) => {
                    return Err(timeout_error(what, "gave up", &seen, diagnostics()));
                }
            },
            Err(e) => format!("error: {e:#}"),
        };
        if start.elapsed() >= deadline {
            let when = format!("timed out after {deadline:?}");
            return Err(timeout_error(what, &when, &last, diagnostics()));
        }
        std::thread::sleep(interval.min(deadline.saturating_sub(start.elapsed())));
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

fn timeout_error(what: &str, when: &str, last: &str, diagnostics: String) -> anyhow::Error {
    let mut msg = format!("{when} waiting for {what}; last observed: {last}");
    if !diagnostics.is_empty() {
        msg.push('\n');
        msg.push_str(&diagnostics);
    }
    anyhow!(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_ready_value() {
        let mut n = 0;
        let v = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            Ok(if n >= 3 { Some(n) } else { None })
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn timeout_names_the_wait_the_last_observation_and_diagnostics() {
        let err = wait_for_with(
            "the impossible",
            Duration::from_millis(50),
            || -> Result<Poll<()>> { Ok(Poll::Pending("seen 7".into())) },
            || "DUMP".to_owned(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("waiting for the impossible; last observed: seen 7"),
            "{err}"
        );
        assert!(err.ends_with("\nDUMP"), "{err}");
    }

    #[test]
    fn fail_stops_at_once() {
        let mut n = 0;
        let err = wait_for("fail", Duration::from_secs(60), || {
            n += 1;
            Ok(Poll::<()>::Fail("exited".into()))
        })
        .unwrap_err();
        assert_eq!(n, 1);
        assert_eq!(
            err.to_string(),
            "gave up waiting for fail; last observed: exited"
        );
    }

    #[test]
    fn errors_are_observations_not_failures() {
        let mut n = 0;
        wait_for("third try", Duration::from_secs(5), || {
            n += 1;
            if n < 3 {
                Err(anyhow!("not yet"))
            } else {
                Ok(true)
            }
        })
        .unwrap();
        let err = wait_for("never", Duration::from_millis(30), || -> Result<bool> {
            Err(anyhow!("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("last observed: error: boom"));
    }
}
