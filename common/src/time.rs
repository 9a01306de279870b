//! Wall-clock time as the cluster's objects store it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time now in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix time now in seconds.
pub fn now_secs() -> i64 {
    unix_secs(SystemTime::now())
}

/// `t` as unix seconds (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
