//! The load balancer of every local sandbox (tasks and the ingress sandbox): what each holds
//! as last applied, so a change is planned against it and costs that change, and the
//! conntrack flushes of backends that left, due once the drain is over.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use mesh_dataplane::lb::{self, LbTable, LoadBalancer};
use tokio::time::Instant;
use tracing::{debug, warn};

/// What each sandbox's load balancer holds, and flushes waiting for their drain to end.
#[derive(Default)]
pub struct Balancers {
    applied: BTreeMap<String, LbTable>,
    /// (when, sandbox, backends gone from its load balancer).
    flushes: Vec<(Instant, (String, BTreeSet<Ipv4Addr>))>,
}

impl Balancers {
    /// Whether sandbox `id` has a programmed load balancer.
    pub fn has(&self, id: &str) -> bool {
        self.applied.contains_key(id)
    }

    /// Sandboxes with a programmed load balancer.
    pub fn sandboxes(&self) -> Vec<String> {
        self.applied.keys().cloned().collect()
    }

    /// What sandbox `id`'s load balancer holds, as last applied.
    pub fn table(&self, id: &str) -> Option<&LbTable> {
        self.applied.get(id)
    }

    /// Forgets sandbox `id` (it is going away).
    pub fn forget(&mut self, id: &str) {
        self.applied.remove(id);
    }

    /// Brings sandbox `id`'s load balancer (in namespace `netns`) to `desired`; backends
    /// that left get their conntrack entries flushed after `drain`. With `keep` (the
    /// endpoint table may be partial, right after an agent restart), nothing it holds is
    /// removed: `desired` is added to it. False when it failed (the next call observes the
    /// namespace again).
    pub fn apply(
        &mut self,
        balancer: &dyn LoadBalancer,
        id: &str,
        netns: &str,
        desired: LbTable,
        drain: Duration,
        keep: bool,
    ) -> bool {
        let desired = if keep {
            let held = match self.applied.get(id) {
                Some(applied) => applied.clone(),
                None => balancer.observe(netns).unwrap_or_default(),
            };
            union(desired, &held)
        } else {
            desired
        };
        let applied = self.applied.get(id);
        let result = match applied {
            Some(applied) => {
                let changes = lb::plan(&desired, applied);
                balancer.apply(netns, &changes).map(|()| changes)
            }
            None => lb::reconcile(balancer, netns, &desired),
        };
        match result {
            Ok(changes) => {
                let before = applied.map(LbTable::backends).unwrap_or_default();
                let gone: BTreeSet<Ipv4Addr> =
                    before.difference(&desired.backends()).copied().collect();
                if !gone.is_empty() {
                    // After the drain: connections opened just before the change (even
                    // half-open ones) must finish; flows left after it (UDP, a dead node's)
                    // must not stick to a backend that is gone.
                    self.flushes
                        .push((Instant::now() + drain, (id.to_string(), gone)));
                }
                if !changes.is_empty() {
                    debug!(
                        sandbox = id,
                        changes = changes.len(),
                        "load balancer updated"
                    );
                }
                self.applied.insert(id.to_string(), desired);
                true
            }
            Err(e) => {
                warn!(sandbox = id, error = %e, "cannot program the load balancer; retrying");
                self.applied.remove(id);
                false
            }
        }
    }

    /// Flushes whose drain is over; backends that came back since are kept.
    pub fn run_due<'a>(
        &mut self,
        balancer_of: impl Fn(&str) -> &'a dyn LoadBalancer,
        now: Instant,
        netns_of: impl Fn(&str) -> Option<String>,
    ) {
        for (id, gone) in super::timers::take_due(&mut self.flushes, now) {
            let current = self
                .applied
                .get(&id)
                .map(LbTable::backends)
                .unwrap_or_default();
            let gone: BTreeSet<Ipv4Addr> = gone.difference(&current).copied().collect();
            let Some(netns) = netns_of(&id) else { continue };
            if !gone.is_empty()
                && let Err(e) = balancer_of(&id).flush_conntrack(&netns, &gone)
            {
                warn!(sandbox = %id, error = %e, "cannot flush conntrack of removed backends");
            }
        }
    }

    /// Forgets every sandbox's applied table: each is observed again at its next apply.
    pub fn forget_all(&mut self) {
        self.applied.clear();
    }

    /// When the next flush is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.flushes.iter().map(|(at, _)| *at).min()
    }
}

/// `a` with every service and backend of `b` added (what is broken in `b` is left out).
fn union(mut a: LbTable, b: &LbTable) -> LbTable {
    for (vip, svc) in &b.services {
        let backends = svc.backends.iter().filter(|ip| **ip != lb::BROKEN).copied();
        match a.services.get_mut(vip) {
            Some(mine) => mine.backends.extend(backends),
            None => {
                a.upsert(lb::LbService::new(*vip, backends));
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(&str, &[&str])]) -> LbTable {
        rows.iter()
            .map(|(vip, backends)| {
                lb::LbService::new(
                    vip.parse().unwrap(),
                    backends.iter().map(|b| b.parse().unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn a_partial_table_adds_to_what_is_held_and_removes_nothing() {
        let held = table(&[
            ("10.0.0.2", &["10.0.0.5", "0.0.0.0"]),
            ("10.0.0.3", &["10.0.0.7"]),
        ]);
        let partial = table(&[("10.0.0.2", &["10.0.0.6"])]);
        assert_eq!(
            union(partial, &held),
            table(&[
                ("10.0.0.2", &["10.0.0.5", "10.0.0.6"]),
                ("10.0.0.3", &["10.0.0.7"])
            ])
        );
    }
}
