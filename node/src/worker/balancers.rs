//! The load balancer of every local sandbox (tasks and the ingress sandbox): what each holds
//! as last applied, so a change is planned against it and costs that change, and the
//! conntrack flushes of backends that left, due once the drain is over.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use mesh_dataplane::Result;
use mesh_dataplane::lb::{self, LbChange, LbTable, LoadBalancer};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How many namespaces' load balancers are programmed at once.
pub const PARALLEL: usize = 8;

/// One sandbox's load balancer brought to `desired`: by `changes` planned against what it
/// holds, or (`None`: nothing known of it) by observing it first.
struct Job {
    id: String,
    netns: String,
    desired: LbTable,
    changes: Option<Vec<LbChange>>,
}

impl Job {
    fn is_noop(&self) -> bool {
        self.changes.as_ref().is_some_and(Vec::is_empty)
    }

    fn run(&self, balancer: &dyn LoadBalancer) -> Result<Vec<LbChange>> {
        match &self.changes {
            Some(changes) => balancer
                .apply(&self.netns, changes)
                .map(|()| changes.clone()),
            None => lb::reconcile(balancer, &self.netns, &self.desired),
        }
    }
}

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
        let job = self.prepare(balancer, id, netns, desired, keep);
        let result = job.run(balancer);
        self.finish(job, result, drain)
    }

    /// [`Balancers::apply`] for many sandboxes at once: planned here, programmed in up to
    /// [`PARALLEL`] namespaces at a time (each is its own kernel transaction), recorded here.
    /// One change on a network costs one transaction per sandbox on it, run side by side.
    pub fn apply_many<'a>(
        &mut self,
        balancer_of: impl Fn(&str) -> &'a dyn LoadBalancer,
        sandboxes: Vec<(String, String, LbTable)>,
        drain: Duration,
        keep: bool,
    ) {
        let jobs: Vec<(Job, &dyn LoadBalancer)> = sandboxes
            .into_iter()
            .map(|(id, netns, desired)| {
                let balancer = balancer_of(&id);
                (self.prepare(balancer, &id, &netns, desired, keep), balancer)
            })
            .filter(|(job, _)| !job.is_noop())
            .collect();
        if jobs.is_empty() {
            return;
        }
        let results: Vec<(Job, Result<Vec<LbChange>>)> = if jobs.len() == 1 {
            jobs.into_iter()
                .map(|(job, lb)| {
                    let r = job.run(lb);
                    (job, r)
                })
                .collect()
        } else {
            let queue = std::sync::Mutex::new(jobs.into_iter());
            let done = std::sync::Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                let workers = PARALLEL.min(queue.lock().map(|q| q.len()).unwrap_or(1));
                for _ in 0..workers {
                    scope.spawn(|| {
                        loop {
                            let next = queue.lock().expect("lb queue lock").next();
                            let Some((job, lb)) = next else { break };
                            let r = job.run(lb);
                            done.lock().expect("lb results lock").push((job, r));
                        }
                    });
                }
            });
            done.into_inner().expect("lb results lock")
        };
        for (job, result) in results {
            self.finish(job, result, drain);
        }
    }

    /// What [`Balancers::apply`] will do for sandbox `id`, planned against what it holds.
    fn prepare(
        &self,
        balancer: &dyn LoadBalancer,
        id: &str,
        netns: &str,
        desired: LbTable,
        keep: bool,
    ) -> Job {
        let desired = if keep {
            let held = match self.applied.get(id) {
                Some(applied) => applied.clone(),
                None => balancer.observe(netns).unwrap_or_default(),
            };
            union(desired, &held)
        } else {
            desired
        };
        let changes = self
            .applied
            .get(id)
            .map(|applied| lb::plan(&desired, applied));
        Job {
            id: id.to_string(),
            netns: netns.to_string(),
            desired,
            changes,
        }
    }

    /// Records the outcome of `job`: what the sandbox holds, and the flushes due after
    /// `drain` for the backends that left.
    fn finish(&mut self, job: Job, result: Result<Vec<LbChange>>, drain: Duration) -> bool {
        let Job { id, desired, .. } = job;
        match result {
            Ok(changes) => {
                let before = self
                    .applied
                    .get(&id)
                    .map(LbTable::backends)
                    .unwrap_or_default();
                let gone: BTreeSet<Ipv4Addr> =
                    before.difference(&desired.backends()).copied().collect();
                if !gone.is_empty() {
                    // After the drain: connections opened just before the change (even
                    // half-open ones) must finish; flows left after it (UDP, a dead node's)
                    // must not stick to a backend that is gone.
                    self.flushes
                        .push((Instant::now() + drain, (id.clone(), gone)));
                }
                if !changes.is_empty() {
                    debug!(
                        sandbox = %id,
                        changes = changes.len(),
                        "load balancer updated"
                    );
                }
                self.applied.insert(id, desired);
                true
            }
            Err(e) => {
                warn!(sandbox = %id, error = %e, "cannot program the load balancer; retrying");
                self.applied.remove(&id);
                false
            }
        }
    }

    /// Flushes whose drain is over; backends that came back since are kept. Returns how
    /// many flushes were done.
    pub fn run_due<'a>(
        &mut self,
        balancer_of: impl Fn(&str) -> &'a dyn LoadBalancer,
        now: Instant,
        netns_of: impl Fn(&str) -> Option<String>,
    ) -> u64 {
        let mut flushed = 0;
        for (id, gone) in super::timers::take_due(&mut self.flushes, now) {
            let current = self
                .applied
                .get(&id)
                .map(LbTable::backends)
                .unwrap_or_default();
            let gone: BTreeSet<Ipv4Addr> = gone.difference(&current).copied().collect();
            let Some(netns) = netns_of(&id) else { continue };
            if gone.is_empty() {
                continue;
            }
            match balancer_of(&id).flush_conntrack(&netns, &gone) {
                Ok(()) => flushed += 1,
                Err(e) => {
                    warn!(sandbox = %id, error = %e, "cannot flush conntrack of removed backends")
                }
            }
        }
        flushed
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
