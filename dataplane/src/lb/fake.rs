//! A load balancer in memory (feature `fake`), on the shared fake kernel ([`FakeNet`]).
//!
//! Each namespace's services, connection-tracking flows and flushes are that namespace's
//! [`LbNs`] part: a namespace that does not exist refuses every call as Linux does (it cannot
//! be opened), and one that is removed takes its load balancer with it. Changes apply whole, so
//! a replaced service is never seen half written.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::error::Result;
use crate::fake::FakeNet;
use crate::lb::{LbChange, LbTable, LoadBalancer};
use crate::netns::At;

/// What the fake load balancer keeps in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbNs {
    pub table: LbTable,
    /// Connection-tracking flows, by the backend they were sent to.
    pub flows: Vec<Ipv4Addr>,
    /// Every [`LoadBalancer::flush_conntrack`], in order: the backends it named.
    pub flushes: Vec<BTreeSet<Ipv4Addr>>,
}

/// The fake load balancer: a view of the namespaces of a [`FakeNet`].
#[derive(Clone, Debug, Default)]
pub struct FakeLb {
    net: FakeNet,
}

impl FakeLb {
    /// A load balancer on a kernel of its own (create namespaces with
    /// [`World::ensure`](crate::fake::World::ensure)).
    pub fn new() -> FakeLb {
        FakeLb::default()
    }

    /// A load balancer on the shared kernel `net`.
    pub fn on(net: FakeNet) -> FakeLb {
        FakeLb { net }
    }

    /// The kernel it works on.
    pub fn net(&self) -> &FakeNet {
        &self.net
    }

    /// What the namespace `netns` holds, if it exists.
    pub fn state(&self, netns: &str) -> Option<LbNs> {
        let w = self.net.lock();
        let parts = w.get(&At::Netns(netns.to_owned()))?;
        Some(parts.get::<LbNs>().cloned().unwrap_or_default())
    }

    /// The services of the namespace `netns`, if it exists.
    pub fn table(&self, netns: &str) -> Option<LbTable> {
        self.state(netns).map(|s| s.table)
    }

    /// Records a flow to `backend` in the connection tracking of `netns`, as traffic through
    /// the VIP would.
    pub fn add_flow(&self, netns: &str, backend: Ipv4Addr) -> Result<()> {
        self.with(netns, |ns| ns.flows.push(backend))
    }

    /// Runs `f` on the part of `netns`; the kernel's error if the namespace does not exist.
    fn with<T>(&self, netns: &str, f: impl FnOnce(&mut LbNs) -> T) -> Result<T> {
        let mut w = self.net.lock();
        let parts = w.require(&At::Netns(netns.to_owned()))?;
        Ok(f(parts.get_mut::<LbNs>()))
    }
}

impl LoadBalancer for FakeLb {
    fn observe(&self, netns: &str) -> Result<LbTable> {
        self.with(netns, |ns| ns.table.clone())
    }

    fn apply(&self, netns: &str, changes: &[LbChange]) -> Result<()> {
        self.with(netns, |ns| {
            for change in changes {
                match change {
                    LbChange::Upsert(s) => {
                        ns.table.upsert(s.clone());
                    }
                    LbChange::Remove(vip) => {
                        ns.table.remove(*vip);
                    }
                }
            }
        })
    }

    fn flush_conntrack(&self, netns: &str, backends: &BTreeSet<Ipv4Addr>) -> Result<()> {
        self.with(netns, |ns| {
            ns.flows.retain(|b| !backends.contains(b));
            ns.flushes.push(backends.clone());
        })
    }

    fn clear(&self, netns: &str) -> Result<()> {
        self.with(netns, |ns| ns.table = LbTable::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::conformance::Harness;

    fn fake_harness() -> Harness<FakeLb> {
        let lb = FakeLb::new();
        lb.net().lock().ensure("mesh-lb-fake");
        let (add, count) = (lb.clone(), lb.clone());
        Harness {
            lb,
            netns: "mesh-lb-fake".into(),
            missing: "mesh-lb-missing".into(),
            add_flow: Box::new(move |backend| {
                add.add_flow("mesh-lb-fake", backend)
                    .expect("namespace exists")
            }),
            flows_to: Box::new(move |backend| {
                let flows = count.state("mesh-lb-fake").unwrap_or_default().flows;
                flows.iter().filter(|b| **b == backend).count()
            }),
            guard: Box::new(()),
        }
    }

    crate::lb_conformance_tests!(fake_harness);

    #[test]
    fn flushes_are_recorded_and_a_removed_namespace_takes_its_table() {
        let lb = FakeLb::new();
        lb.net().lock().ensure("t1");
        let b: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 0, 0, 9)].into();
        lb.apply(
            "t1",
            &[LbChange::Upsert(crate::lb::LbService::new(
                Ipv4Addr::new(10, 0, 0, 5),
                b.clone(),
            ))],
        )
        .unwrap();
        lb.flush_conntrack("t1", &b).unwrap();
        assert_eq!(lb.state("t1").unwrap().flushes, vec![b]);
        lb.net().lock().remove("t1");
        assert_eq!(lb.table("t1"), None);
        lb.net().lock().ensure("t1");
        assert_eq!(lb.table("t1"), Some(LbTable::new()));
    }
}
