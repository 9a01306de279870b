//! Waiting for a condition by polling, with a deadline and a useful message on timeout.
//!
//! Tests never sleep a fixed time: they poll what they expect until a deadline. A check
//! returns `bool`, `Option<T>` or [`Poll<T>`] (which can say what it saw), wrapped in
//! `Result`: an error does not end the wait, it is recorded as the last observation (a daemon
//! that does not answer *yet* is the normal case). Deadlines are multiplied by the
//! `MESH_TEST_PATIENCE` environment variable (a float, default 1) on slow machines.
//!
//! [`wait_for`] blocks the calling thread; [`wait_for_async`] is the same wait for async code
//! and keeps time with tokio's clock, so under a paused test clock it waits in paused time
//! too. Both run one loop (`Wait`); on timeout the error names what was awaited and the last
//! observation, followed by the caller's diagnostics if it gave any (`*_with`). Pauses between
//! checks grow from 10 ms to 200 ms; [`wait_for_async_every`] keeps one pace, for benchmarks.
//! [`watch`] is the converse: it polls throughout a window to see that something does *not*
//! happen.

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

/// Pause after the first check; it doubles after each check up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between two checks.
const MAX_PAUSE: Duration = Duration::from_millis(200);
/// [`watch`] checks at least this often, however slow one check is.
pub const MIN_WATCH_ROUNDS: usize = 3;

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
    let start = Instant::now();
    let mut wait = Wait::new(what, deadline);
    loop {
        let outcome = check();
        match wait.step(outcome, start.elapsed()) {
            Step::Ready(v) => return Ok(v),
            Step::Sleep(pause) => std::thread::sleep(pause),
            Step::Stop { when, last } => return Err(wait.error(&when, &last, diagnostics())),
        }
    }
}

/// [`wait_for`] for async code: `check` is awaited, and the deadline and pauses are kept on
/// tokio's clock (paused time included).
pub async fn wait_for_async<T, R: IntoPoll<T>>(
    what: &str,
    deadline: Duration,
    check: impl AsyncFnMut() -> Result<R>,
) -> Result<T> {
    run_async(Wait::new(what, deadline), check, String::new).await
}

/// [`wait_for_async`], appending `diagnostics()` to the error on timeout.
pub async fn wait_for_async_with<T, R: IntoPoll<T>>(
    what: &str,
    deadline: Duration,
    check: impl AsyncFnMut() -> Result<R>,
    diagnostics: impl FnOnce() -> String,
) -> Result<T> {
    run_async(Wait::new(what, deadline), check, diagnostics).await
}

/// [`wait_for_async`] pausing `pause` between checks, without backing off: for benchmarks,
/// where the pause bounds the error of the time measured.
pub async fn wait_for_async_every<T, R: IntoPoll<T>>(
    what: &str,
    deadline: Duration,
    pause: Duration,
    check: impl AsyncFnMut() -> Result<R>,
) -> Result<T> {
    run_async(
        Wait::paced(what, deadline, pause, pause),
        check,
        String::new,
    )
    .await
}

async fn run_async<T, R: IntoPoll<T>>(
    mut wait: Wait<'_>,
    mut check: impl AsyncFnMut() -> Result<R>,
    diagnostics: impl FnOnce() -> String,
) -> Result<T> {
    let start = tokio::time::Instant::now();
    loop {
        let outcome = check().await;
        match wait.step(outcome, start.elapsed()) {
            Step::Ready(v) => return Ok(v),
            Step::Sleep(pause) => tokio::time::sleep(pause).await,
            Step::Stop { when, last } => return Err(wait.error(&when, &last, diagnostics())),
        }
    }
}

/// Polls `check` throughout `window` (and at least [`MIN_WATCH_ROUNDS`] times) to see that
/// something does *not* happen: `Ok(None)` if `check` never reported anything, else its first
/// report. An error from `check` ends the watch. `window` is not scaled by [`patience`]: it
/// is the claim under test, not a budget.
pub fn watch<T>(
    window: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    for round in 1.. {
        if let Some(seen) = check()? {
            return Ok(Some(seen));
        }
        let left = window.saturating_sub(start.elapsed());
        if left.is_zero() && round >= MIN_WATCH_ROUNDS {
            break;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(MAX_PAUSE);
    }
    Ok(None)
}

/// One wait in progress: what the blocking and the async loop share (they differ only in
/// their clock and how they pause).
struct Wait<'a> {
    what: &'a str,
    /// Already scaled by [`patience`].
    deadline: Duration,
    /// The next pause; it doubles after each check up to `max_pause`.
    pause: Duration,
    max_pause: Duration,
}

/// What a wait does after a check.
enum Step<T> {
    Ready(T),
    Sleep(Duration),
    /// Fail: `when` says why the wait ended, `last` what was last observed.
    Stop {
        when: String,
        last: String,
    },
}

impl<'a> Wait<'a> {
    fn new(what: &'a str, deadline: Duration) -> Self {
        Wait::paced(what, deadline, FIRST_PAUSE, MAX_PAUSE)
    }

    fn paced(
        what: &'a str,
        deadline: Duration,
        first_pause: Duration,
        max_pause: Duration,
    ) -> Self {
        Wait {
            what,
            deadline: scaled(deadline),
            pause: first_pause,
            max_pause,
        }
    }

    /// Judges the outcome of a check made `elapsed` after the wait began.
    fn step<T, R: IntoPoll<T>>(&mut self, outcome: Result<R>, elapsed: Duration) -> Step<T> {
        let last = match outcome {
            Ok(r) => match r.into_poll() {
                Poll::Ready(v) => return Step::Ready(v),
                Poll::Pending(seen) => seen,
                Poll::Fail(seen) => {
                    return Step::Stop {
                        when: "gave up".to_owned(),
                        last: seen,
                    };
                }
            },
            Err(e) => format!("error: {e:#}"),
        };
        if elapsed >= self.deadline {
            return Step::Stop {
                when: format!("timed out after {:?}", self.deadline),
                last,
            };
        }
        let pause = self.pause.min(self.deadline - elapsed);
        self.pause = (self.pause * 2).min(self.max_pause);
        Step::Sleep(pause)
    }

    fn error(&self, when: &str, last: &str, diagnostics: String) -> anyhow::Error {
        let mut msg = format!("{when} waiting for {}; last observed: {last}", self.what);
        if !diagnostics.is_empty() {
            msg.push('\n');
            msg.push_str(&diagnostics);
        }
        anyhow!(msg)
    }
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

    #[tokio::test(start_paused = true)]
    async fn async_waits_keep_time_on_tokios_clock() {
        // Paused: ten minutes of waiting pass at once, because the wait sleeps on tokio's clock.
        let real = Instant::now();
        let start = tokio::time::Instant::now();
        let err = wait_for_async("never", Duration::from_secs(600), async || Ok(false))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("timed out after"), "{err}");
        assert!(
            err.contains("waiting for never; last observed: false"),
            "{err}"
        );
        assert!(start.elapsed() >= scaled(Duration::from_secs(600)));
        assert!(
            real.elapsed() < Duration::from_secs(30),
            "{:?}",
            real.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn async_waits_return_the_ready_value_and_carry_diagnostics() {
        let mut n = 0;
        let v = wait_for_async("n to reach 3", Duration::from_secs(5), async || {
            n += 1;
            Ok(if n >= 3 { Some(n) } else { None })
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
        let err = wait_for_async_with(
            "fail",
            Duration::from_secs(5),
            async || Ok(Poll::<()>::Fail("exited".into())),
            || "DUMP".to_owned(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "gave up waiting for fail; last observed: exited\nDUMP"
        );
    }

    #[test]
    fn watch_reports_the_first_event_or_nothing_after_the_window() {
        let mut n = 0;
        let quiet = watch(Duration::from_millis(30), || {
            n += 1;
            Ok(None::<usize>)
        })
        .unwrap();
        assert_eq!(quiet, None);
        assert!(n >= MIN_WATCH_ROUNDS, "{n} rounds");
        let mut n = 0;
        let seen = watch(Duration::from_secs(60), || {
            n += 1;
            Ok((n == 2).then_some(n))
        })
        .unwrap();
        assert_eq!(seen, Some(2));
        assert!(
            watch(Duration::from_secs(60), || -> Result<Option<()>> {
                Err(anyhow!("boom"))
            })
            .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_async_wait_checks_at_its_pace() {
        let start = tokio::time::Instant::now();
        let mut checks = Vec::new();
        wait_for_async_every(
            "the fifth check",
            Duration::from_secs(5),
            Duration::from_millis(7),
            async || {
                checks.push(start.elapsed());
                Ok(checks.len() == 5)
            },
        )
        .await
        .unwrap();
        let gaps: Vec<Duration> = checks.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [Duration::from_millis(7); 4]);
    }
}
