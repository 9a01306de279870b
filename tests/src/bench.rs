//! What the benchmarks (`tests/benches/`) share: knobs from the environment, percentiles and
//! the summary table.

use std::time::Duration;

/// The value of the environment variable `name` as a count, or `default` if unset or not one.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile `p` (0-100) of non-empty sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// `d` in milliseconds with `decimals` decimals.
pub fn ms(d: Duration, decimals: usize) -> String {
    format!("{:.*}", decimals, d.as_secs_f64() * 1000.0)
}

/// One measurement of a benchmark's summary table: its samples, sorted, and the p99 goal it
/// has, if any.
pub struct Row {
    pub what: String,
    pub samples: Vec<Duration>,
    pub goal: Option<Duration>,
}

impl Row {
    pub fn new(what: impl Into<String>, mut samples: Vec<Duration>) -> Row {
        samples.sort();
        Row {
            what: what.into(),
            samples,
            goal: None,
        }
    }

    /// The row with a p99 goal, which the table says is met or missed.
    pub fn with_goal(self, goal: Duration) -> Row {
        Row {
            goal: Some(goal),
            ..self
        }
    }
}

/// Prints `rows` as a table: count, p50, p99, min and max in milliseconds with `decimals`
/// decimals, and a goal column when a row has a goal.
pub fn print_table(rows: &[Row], decimals: usize) {
    let goals = rows.iter().any(|r| r.goal.is_some());
    println!();
    println!(
        "{:<62} {:>5} {:>10} {:>10} {:>10} {:>10}{}",
        "measurement",
        "n",
        "p50 ms",
        "p99 ms",
        "min ms",
        "max ms",
        if goals { "  goal" } else { "" }
    );
    for r in rows {
        let s = &r.samples;
        let (Some(min), Some(max)) = (s.first(), s.last()) else {
            println!("{:<62} {:>5}", r.what, 0);
            continue;
        };
        let p99 = percentile(s, 99.0);
        let goal = match r.goal {
            Some(g) if p99 <= g => format!("  p99 <= {} ms: met", ms(g, 0)),
            Some(g) => format!("  p99 <= {} ms: MISSED", ms(g, 0)),
            None if goals => "  -".to_owned(),
            None => String::new(),
        };
        println!(
            "{:<62} {:>5} {:>10} {:>10} {:>10} {:>10}{goal}",
            r.what,
            s.len(),
            ms(percentile(s, 50.0), decimals),
            ms(p99, decimals),
            ms(*min, decimals),
            ms(*max, decimals),
        );
    }
}
