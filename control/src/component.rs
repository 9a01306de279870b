//! The leader's components: each is its own loop over store changes (the allocator, the
//! orchestrators, the scheduler, the task reaper, the role reconciler), as in swarmkit.
//!
//! A component plans from the state it reads and commits with preconditions on the versions
//! it read, so two components (or a new leader continuing an old one's work) never undo each
//! other: a transaction planned from a stale read fails and is planned again. Components idle
//! while their manager is not the leader.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use crate::error::ControlError;
use crate::store::Store;

/// One job of the leader.
pub trait Component: Send + 'static {
    /// Its name in logs.
    fn name(&self) -> &'static str;

    /// One pass: read the store, commit what it plans (nothing when converged).
    fn reconcile(&mut self) -> impl Future<Output = Result<(), ControlError>> + Send;
}

/// Runs `component` until `shutdown`: a pass after every store change and every `tick`
/// (for what depends on time: grace periods, update delays), on the leader only. A failed
/// pass is logged and retried at the next wake-up.
pub fn spawn<C: Component>(
    store: Store,
    mut component: C,
    tick: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("component", name = component.name());
    tokio::spawn(
        async move {
            let mut changes = store.subscribe();
            let mut leader = store.watch_leader();
            let mut tick = tokio::time::interval(tick);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    r = changes.changed() => if r.is_err() { return },
                    r = leader.changed() => if r.is_err() { return },
                }
                if !store.is_leader() {
                    continue;
                }
                if let Err(e) = component.reconcile().await {
                    warn!(error = %e, "reconciliation failed; retrying");
                }
            }
        }
        .instrument(span),
    )
}

/// Starts components that share a store, a tick and a shutdown.
pub struct Runner {
    pub store: Store,
    pub tick: Duration,
    pub shutdown: CancellationToken,
}

impl Runner {
    pub fn run<C: Component>(&self, component: C) -> tokio::task::JoinHandle<()> {
        spawn(
            self.store.clone(),
            component,
            self.tick,
            self.shutdown.clone(),
        )
    }
}
