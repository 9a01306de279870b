//! Node-local addresses on the gateway bridge, one per task that has egress.
//!
//! These addresses never leave the node (they are masqueraded), so each node hands them out
//! alone, from the gateway subnet minus the network address, the bridge's own address and the
//! broadcast address. After a restart, [`GatewayAllocator::adopt`] takes back the addresses
//! that running tasks already hold, so a reconcile keeps their links untouched.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::overlay::ids::TaskId;
use crate::overlay::model::{GatewayConfig, TASK_GATEWAY_IFNAME};
use crate::overlay::observed::Observed;
use crate::types::Ipv4Cidr;

/// Hands out gateway-bridge addresses to tasks; the same task always gets the same address
/// while it holds one.
#[derive(Clone, Debug)]
pub struct GatewayAllocator {
    /// The bridge's address and the subnet's prefix length.
    bridge: Ipv4Cidr,
    by_task: BTreeMap<TaskId, Ipv4Addr>,
    by_addr: BTreeMap<Ipv4Addr, TaskId>,
    /// Where the search for a free address starts: after the last one handed out, so a
    /// released address is not reused at once.
    next: u32,
}

impl GatewayAllocator {
    pub fn new(config: &GatewayConfig) -> GatewayAllocator {
        GatewayAllocator {
            bridge: config.address,
            by_task: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            next: 0,
        }
    }

    /// The address of `task`, allocating one if it has none.
    pub fn allocate(&mut self, task: &TaskId) -> Result<Ipv4Cidr> {
        if let Some(addr) = self.by_task.get(task) {
            return self.cidr(*addr);
        }
        let network = u32::from(self.bridge.network().addr());
        let size = 1u64 << (32 - u32::from(self.bridge.prefix_len()));
        // Host part 1 ..= size - 2: no network nor broadcast address.
        let hosts = (size - 2) as u32;
        for i in 0..hosts {
            let host = 1 + (self.next + i) % hosts;
            let addr = Ipv4Addr::from(network + host);
            if addr == self.bridge.addr() || self.by_addr.contains_key(&addr) {
                continue;
            }
            self.next = host;
            self.by_task.insert(task.clone(), addr);
            self.by_addr.insert(addr, task.clone());
            return self.cidr(addr);
        }
        Err(Error::PoolExhausted {
            pool: format!("gateway bridge {}", self.bridge.network()),
        })
    }

    /// Returns the address of `task` to the pool.
    pub fn release(&mut self, task: &TaskId) {
        if let Some(addr) = self.by_task.remove(task) {
            self.by_addr.remove(&addr);
        }
    }

    /// Records that `task` holds `addr` (found in the kernel after a restart). Refused if the
    /// address is outside the subnet or held by another task.
    pub fn claim(&mut self, task: &TaskId, addr: Ipv4Addr) -> Result<()> {
        let refuse = |reason: String| {
            Err(Error::InvalidSpec {
                item: format!("gateway address {addr} of task {task}"),
                reason,
            })
        };
        if !self.bridge.contains(addr) || addr == self.bridge.addr() {
            return refuse(format!("not a host address of {}", self.bridge));
        }
        match self.by_addr.get(&addr) {
            Some(holder) if holder != task => return refuse(format!("held by task {holder}")),
            _ => {}
        }
        self.release(task);
        self.by_task.insert(task.clone(), addr);
        self.by_addr.insert(addr, task.clone());
        Ok(())
    }

    /// Claims the gateway addresses that the observed sandboxes of `tasks` hold, so a restarted
    /// agent gives running tasks the addresses they have. Tasks not listed, and addresses that
    /// cannot be claimed, are skipped (the reconcile replaces them).
    pub fn adopt<'a>(&mut self, observed: &Observed, tasks: impl IntoIterator<Item = &'a TaskId>) {
        for task in tasks {
            let held = observed
                .tasks
                .get(task.short())
                .and_then(|s| s.link(TASK_GATEWAY_IFNAME))
                .and_then(|l| l.addrs.first());
            if let Some(cidr) = held
                && cidr.prefix_len() == self.bridge.prefix_len()
            {
                let _ = self.claim(task, cidr.addr());
            }
        }
    }

    fn cidr(&self, addr: Ipv4Addr) -> Result<Ipv4Cidr> {
        Ipv4Cidr::new(addr, self.bridge.prefix_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IfName;

    fn config(cidr: &str) -> GatewayConfig {
        GatewayConfig {
            bridge: IfName::new("gwb").unwrap(),
            address: cidr.parse().unwrap(),
            ..GatewayConfig::default()
        }
    }

    fn task(id: &str) -> TaskId {
        TaskId::new(id).unwrap()
    }

    #[test]
    fn allocates_stable_unique_addresses_and_skips_the_bridge() {
        let mut a = GatewayAllocator::new(&config("172.30.0.1/16"));
        let t1 = a.allocate(&task("t1")).unwrap();
        let t2 = a.allocate(&task("t2")).unwrap();
        assert_eq!(t1.to_string(), "172.30.0.2/16");
        assert_eq!(t2.to_string(), "172.30.0.3/16");
        assert_eq!(a.allocate(&task("t1")).unwrap(), t1);
    }

    #[test]
    fn exhaustion_is_an_error_and_release_frees() {
        // A /30 has two host addresses; the bridge holds one.
        let mut a = GatewayAllocator::new(&config("10.9.0.1/30"));
        assert_eq!(a.allocate(&task("t1")).unwrap().to_string(), "10.9.0.2/30");
        let err = a.allocate(&task("t2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address pool gateway bridge 10.9.0.0/30 exhausted"
        );
        a.release(&task("t1"));
        assert_eq!(a.allocate(&task("t2")).unwrap().to_string(), "10.9.0.2/30");
    }

    #[test]
    fn claims_are_checked() {
        let mut a = GatewayAllocator::new(&config("172.30.0.1/16"));
        a.claim(&task("t1"), Ipv4Addr::new(172, 30, 9, 9)).unwrap();
        assert_eq!(
            a.allocate(&task("t1")).unwrap().to_string(),
            "172.30.9.9/16"
        );
        assert!(a.claim(&task("t2"), Ipv4Addr::new(172, 30, 9, 9)).is_err());
        assert!(a.claim(&task("t2"), Ipv4Addr::new(10, 0, 0, 1)).is_err());
        assert!(a.claim(&task("t2"), Ipv4Addr::new(172, 30, 0, 1)).is_err());
    }
}
