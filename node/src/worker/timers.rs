//! Deadlines of the worker's timed work (drains ending).

use tokio::time::Instant;

/// The items of `queue` due at `now`, taken out of it in order.
pub fn take_due<T>(queue: &mut Vec<(Instant, T)>, now: Instant) -> Vec<T> {
    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(queue)
        .into_iter()
        .partition(|(at, _)| *at <= now);
    *queue = later;
    due.into_iter().map(|(_, item)| item).collect()
}

/// Resolves at `until`; never if `None`.
pub async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The next item of `rx`; never, while there is no receiver yet.
pub async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
