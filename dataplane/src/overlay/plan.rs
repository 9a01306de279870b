//! The pure planner: desired state + observed state -> the operations that make them equal.
//!
//! # What a plan keeps, changes and removes
//! - What is already right is not touched: no op names it, so a re-plan of a converged node is
//!   empty and running tasks keep their links, addresses and connections.
//! - What is wrong but repairable in place (a link down, an MTU, a missing address, a bridge
//!   port not enslaved, a wrong neighbor MAC) is repaired by re-running its idempotent create
//!   op, which leaves the parts that were right alone.
//! - What cannot be repaired in place (a VXLAN device with another VNI, port or local address;
//!   one end of a veth pair without the other) is removed and created again.
//! - What is stale is removed: namespaces with our prefix that nothing wants (tasks, networks
//!   without local endpoints, strays), links inside our sandboxes that nothing wants, FDB and
//!   neighbor entries of endpoints that left, the gateway bridge and masquerade rule once no
//!   task needs egress, and VXLAN devices stranded in the daemon's namespace by a crash.
//!   Nothing outside our scope ([`Scope`](crate::overlay::Scope)) is ever named.
//!
//! # Order
//! Removals come first, users before what they use (task sandboxes and their links, then
//! network sandboxes and their entries, then the daemon's namespace), then creations, what is
//! used before its users (gateway bridge and masquerade, then network sandboxes, VXLAN devices
//! and their entries, then task sandboxes and their links).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::netns::At;
use crate::nft::{self, Masquerade};
use crate::overlay::ids::{Vni, gateway_port_of_short, network_port_of_short};
use crate::overlay::model::{
    BRIDGE_IFNAME, NodeDataplane, RemoteEndpoint, TASK_GATEWAY_IFNAME, TaskSandbox, VXLAN_IFNAME,
};
use crate::overlay::observed::{FdbEntry, LinkKind, LinkState, NsSnapshot, Observed};
use crate::overlay::op::{Op, VxlanSpec};
use crate::types::{IfName, Mac};

/// The ops that turn `observed` into `desired` (see the module doc for what is kept and the
/// order). Refuses a `desired` that [`NodeDataplane::validate`] refuses.
pub fn plan(desired: &NodeDataplane, observed: &Observed) -> Result<Vec<Op>> {
    desired.validate()?;
    nft::check_table_name(&desired.gateway.nft_table)?;
    let mut p = Planner {
        desired,
        observed,
        task_down: Vec::new(),
        net_down: Vec::new(),
        host_down: Vec::new(),
        host_up: Vec::new(),
        net_up: Vec::new(),
        task_up: Vec::new(),
        removed_tasks: BTreeSet::new(),
        removed_gateway_ports: BTreeSet::new(),
    };
    p.tasks();
    p.networks();
    p.host();
    let Planner {
        mut task_down,
        net_down,
        host_down,
        host_up,
        net_up,
        task_up,
        ..
    } = p;
    task_down.extend(net_down);
    task_down.extend(host_down);
    task_down.extend(host_up);
    task_down.extend(net_up);
    task_down.extend(task_up);
    Ok(task_down)
}

/// The ops that bring one remote endpoint's kernel entries from `old` to `new`, without
/// observing: what a gossip event costs. `desired` is the state *after* the change (it holds
/// `new` and no longer `old` if the address changed hands). The result is what
/// [`plan`] would converge the same entries to.
pub fn plan_remote_change(
    desired: &NodeDataplane,
    old: Option<&RemoteEndpoint>,
    new: Option<&RemoteEndpoint>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let new = new.filter(|n| desired.is_programmed(n));
    if let Some(old) = old.filter(|o| desired.is_programmed(o)) {
        let netns = desired.prefix.network_netns(old.vni);
        let fdb_still_wanted = desired.remotes.values().any(|r| {
            r.vni == old.vni && r.mac == old.mac && r.vtep == old.vtep && desired.is_programmed(r)
        });
        if !fdb_still_wanted {
            ops.push(Op::RemoveFdb {
                netns: netns.clone(),
                mac: old.mac,
                vtep: old.vtep,
            });
        }
        let ip_still_wanted = desired
            .remotes
            .get(&(old.vni, old.ip))
            .is_some_and(|r| desired.is_programmed(r));
        if !ip_still_wanted {
            ops.push(Op::RemoveNeighbor { netns, ip: old.ip });
        }
    }
    if let Some(new) = new {
        let netns = desired.prefix.network_netns(new.vni);
        ops.push(Op::AddNeighbor {
            netns: netns.clone(),
            ip: new.ip,
            mac: new.mac,
        });
        ops.push(Op::AddFdb {
            netns,
            mac: new.mac,
            vtep: new.vtep,
        });
    }
    ops
}

/// Checks that `remote` may join `desired` without breaking what [`NodeDataplane::validate`]
/// requires of remotes.
pub(crate) fn check_remote(desired: &NodeDataplane, remote: &RemoteEndpoint) -> Result<()> {
    let item = || format!("remote endpoint {} on vni {}", remote.ip, remote.vni);
    if let Some(network) = desired.networks.get(&remote.vni)
        && network.gateway.addr() == remote.ip
    {
        return Err(Error::InvalidSpec {
            item: item(),
            reason: "address is the gateway's".into(),
        });
    }
    if let Some(other) = desired.remotes.values().find(|r| {
        r.vni == remote.vni && r.mac == remote.mac && r.ip != remote.ip && desired.is_programmed(r)
    }) {
        return Err(Error::InvalidSpec {
            item: item(),
            reason: format!("mac {} also used by {}", remote.mac, other.ip),
        });
    }
    Ok(())
}

struct Planner<'a> {
    desired: &'a NodeDataplane,
    observed: &'a Observed,
    task_down: Vec<Op>,
    net_down: Vec<Op>,
    host_down: Vec<Op>,
    host_up: Vec<Op>,
    net_up: Vec<Op>,
    task_up: Vec<Op>,
    /// Short ids of observed task sandboxes being removed: their veths go with them, so their
    /// ports elsewhere need no op of their own.
    removed_tasks: BTreeSet<String>,
    /// Gateway ports whose task end is being removed (so they go with it).
    removed_gateway_ports: BTreeSet<IfName>,
}

impl Planner<'_> {
    fn tasks(&mut self) {
        let desired_shorts: BTreeSet<&str> =
            self.desired.tasks.values().map(|t| t.id.short()).collect();
        for short in self.observed.tasks.keys() {
            if !desired_shorts.contains(short.as_str()) {
                self.task_down.push(Op::RemoveSandbox {
                    netns: self.desired.prefix.task_netns_of_short(short),
                });
                self.removed_tasks.insert(short.clone());
            }
        }
        for stray in &self.observed.strays {
            self.task_down.push(Op::RemoveSandbox {
                netns: stray.clone(),
            });
        }
        for task in self.desired.tasks.values() {
            self.task(task);
        }
    }

    fn task(&mut self, task: &TaskSandbox) {
        let desired = self.desired;
        let netns = desired.prefix.task_netns(&task.id);
        let empty = NsSnapshot::default();
        let snap = self.observed.tasks.get(task.id.short());
        let lo_up = snap.and_then(|s| s.link("lo")).is_some_and(|l| l.up);
        if !lo_up {
            self.task_up.push(Op::CreateTaskSandbox {
                netns: netns.clone(),
            });
        }
        let snap = snap.unwrap_or(&empty);

        for name in snap.links.keys() {
            let wanted = name.as_str() == "lo"
                || task.endpoints.iter().any(|e| e.ifname == *name)
                || (task.egress.is_some() && name.as_str() == TASK_GATEWAY_IFNAME);
            if !wanted {
                if name.as_str() == TASK_GATEWAY_IFNAME {
                    self.removed_gateway_ports.insert(task.id.gateway_port());
                }
                self.task_down.push(Op::RemoveLink {
                    at: At::Netns(netns.clone()),
                    ifname: name.clone(),
                });
            }
        }
        if task.egress.is_none() && snap.default_gateway.is_some() {
            self.task_down.push(Op::RemoveDefaultRoute {
                netns: netns.clone(),
            });
        }

        for ep in &task.endpoints {
            let network = &desired.networks[&ep.vni];
            let network_netns = desired.prefix.network_netns(ep.vni);
            let port = task.id.network_port();
            let inner = snap.links.get(&ep.ifname);
            let outer = self
                .observed
                .networks
                .get(&ep.vni)
                .and_then(|s| s.links.get(&port));
            let inner_ok = inner.is_some_and(|l| {
                veth_ok(l, network.mtu) && l.mac == Some(ep.mac) && l.has_only_address(ep.addr)
            });
            let outer_ok = outer.is_some_and(|l| {
                veth_ok(l, network.mtu)
                    && l.controller
                        .as_ref()
                        .is_some_and(|c| c.as_str() == BRIDGE_IFNAME)
            });
            if inner_ok && outer_ok {
                continue;
            }
            self.remove_half_pair(
                (inner.is_some(), At::Netns(netns.clone()), &ep.ifname),
                (outer.is_some(), At::Netns(network_netns.clone()), &port),
            );
            self.task_up.push(Op::AttachEndpoint {
                task_netns: netns.clone(),
                ifname: ep.ifname.clone(),
                addr: ep.addr,
                mac: ep.mac,
                mtu: network.mtu,
                network_netns,
                port,
            });
        }

        if let Some(addr) = task.egress {
            let gw = &desired.gateway;
            let port = task.id.gateway_port();
            let inner_name = IfName::new(TASK_GATEWAY_IFNAME).expect("valid");
            let inner = snap.links.get(&inner_name);
            let outer = self.observed.host.gateway_ports.get(&port);
            let mac = Mac::from_ipv4(addr.addr());
            let inner_ok = inner.is_some_and(|l| {
                veth_ok(l, gw.mtu) && l.mac == Some(mac) && l.has_only_address(addr)
            }) && snap.default_gateway == Some(gw.address.addr());
            // Every observed gateway port is enslaved to the gateway bridge by definition.
            let outer_ok = outer.is_some_and(|l| veth_ok(l, gw.mtu) && l.isolated);
            if !(inner_ok && outer_ok) {
                self.remove_half_pair(
                    (inner.is_some(), At::Netns(netns.clone()), &inner_name),
                    (outer.is_some(), At::Host, &port),
                );
                self.task_up.push(Op::AttachGateway {
                    task_netns: netns,
                    addr,
                    mac,
                    mtu: gw.mtu,
                    port,
                    bridge: gw.bridge.clone(),
                    gateway: gw.address.addr(),
                });
            }
        }
    }

    /// When exactly one end of a veth pair exists it cannot be completed: remove it so the
    /// attach op creates the pair anew.
    fn remove_half_pair(&mut self, inner: (bool, At, &IfName), outer: (bool, At, &IfName)) {
        let (inner_exists, inner_at, inner_name) = inner;
        let (outer_exists, outer_at, outer_name) = outer;
        if inner_exists && !outer_exists {
            self.task_down.push(Op::RemoveLink {
                at: inner_at,
                ifname: inner_name.clone(),
            });
        } else if outer_exists && !inner_exists {
            let op = Op::RemoveLink {
                at: outer_at.clone(),
                ifname: outer_name.clone(),
            };
            match outer_at {
                At::Host => self.host_down.push(op),
                At::Netns(_) => self.net_down.push(op),
            }
        }
    }

    fn networks(&mut self) {
        let desired = self.desired;
        let wanted: BTreeSet<Vni> = desired
            .networks
            .keys()
            .copied()
            .filter(|vni| desired.has_local_endpoints(*vni))
            .collect();
        for vni in self.observed.networks.keys() {
            if !wanted.contains(vni) {
                self.net_down.push(Op::RemoveSandbox {
                    netns: desired.prefix.network_netns(*vni),
                });
            }
        }
        for vni in wanted {
            self.network(vni);
        }
    }

    fn network(&mut self, vni: Vni) {
        let desired = self.desired;
        let spec = &desired.networks[&vni];
        let netns = desired.prefix.network_netns(vni);
        let vxlan = VxlanSpec {
            vni,
            port: desired.data_port,
            local: desired.underlay_ip,
            mtu: spec.mtu,
        };
        let empty = NsSnapshot::default();
        let snap = self.observed.networks.get(&vni);
        let bridge_ok = snap.and_then(|s| s.link(BRIDGE_IFNAME)).is_some_and(|l| {
            l.kind == LinkKind::Bridge
                && l.mtu == spec.mtu
                && l.up
                && l.has_only_address(spec.gateway)
        });
        if !bridge_ok {
            self.net_up.push(Op::CreateNetworkSandbox {
                netns: netns.clone(),
                gateway: spec.gateway,
                mtu: spec.mtu,
            });
        }
        let snap = snap.unwrap_or(&empty);

        // The entries of a VXLAN device that is (re)created now start empty.
        let (fdb, neighbors) = match snap.link(VXLAN_IFNAME) {
            None => {
                self.net_up.push(Op::CreateVxlan {
                    netns: netns.clone(),
                    vxlan,
                });
                Default::default()
            }
            Some(l) if l.kind != LinkKind::Vxlan || l.vxlan != Some(vxlan.config()) => {
                self.net_down.push(Op::RemoveLink {
                    at: At::Netns(netns.clone()),
                    ifname: IfName::new(VXLAN_IFNAME).expect("valid"),
                });
                self.net_up.push(Op::CreateVxlan {
                    netns: netns.clone(),
                    vxlan,
                });
                Default::default()
            }
            Some(l) => {
                let enslaved = l
                    .controller
                    .as_ref()
                    .is_some_and(|c| c.as_str() == BRIDGE_IFNAME);
                if l.mtu != spec.mtu || !l.up || !enslaved {
                    self.net_up.push(Op::CreateVxlan {
                        netns: netns.clone(),
                        vxlan,
                    });
                }
                (snap.fdb_of(VXLAN_IFNAME), snap.neighbors_of(VXLAN_IFNAME))
            }
        };
        self.entries(vni, &netns, &fdb, &neighbors);

        // Links of the sandbox that no local endpoint wants.
        let ports: BTreeSet<IfName> = desired
            .tasks
            .values()
            .filter(|t| t.endpoints.iter().any(|e| e.vni == vni))
            .map(|t| t.id.network_port())
            .collect();
        let removed: BTreeSet<IfName> = self
            .removed_tasks
            .iter()
            .map(|s| network_port_of_short(s))
            .collect();
        for name in snap.links.keys() {
            let keep = matches!(name.as_str(), "lo" | BRIDGE_IFNAME | VXLAN_IFNAME)
                || ports.contains(name)
                || removed.contains(name);
            if !keep {
                self.net_down.push(Op::RemoveLink {
                    at: At::Netns(netns.clone()),
                    ifname: name.clone(),
                });
            }
        }
    }

    /// FDB and neighbor entries of one network: stale ones removed, missing or wrong ones added.
    fn entries(
        &mut self,
        vni: Vni,
        netns: &str,
        fdb: &BTreeSet<FdbEntry>,
        neighbors: &BTreeMap<Ipv4Addr, Mac>,
    ) {
        let desired = self.desired;
        let remotes: Vec<&RemoteEndpoint> = desired
            .remotes
            .range((vni, Ipv4Addr::UNSPECIFIED)..=(vni, Ipv4Addr::BROADCAST))
            .map(|(_, r)| r)
            .filter(|r| desired.is_programmed(r))
            .collect();
        let want_fdb: BTreeSet<FdbEntry> = remotes
            .iter()
            .map(|r| FdbEntry {
                mac: r.mac,
                vtep: r.vtep,
            })
            .collect();
        let want_neighbors: BTreeMap<Ipv4Addr, Mac> =
            remotes.iter().map(|r| (r.ip, r.mac)).collect();
        for entry in fdb.difference(&want_fdb) {
            self.net_down.push(Op::RemoveFdb {
                netns: netns.to_owned(),
                mac: entry.mac,
                vtep: entry.vtep,
            });
        }
        for ip in neighbors
            .keys()
            .filter(|ip| !want_neighbors.contains_key(ip))
        {
            self.net_down.push(Op::RemoveNeighbor {
                netns: netns.to_owned(),
                ip: *ip,
            });
        }
        for (ip, mac) in &want_neighbors {
            if neighbors.get(ip) != Some(mac) {
                self.net_up.push(Op::AddNeighbor {
                    netns: netns.to_owned(),
                    ip: *ip,
                    mac: *mac,
                });
            }
        }
        for entry in want_fdb.difference(fdb) {
            self.net_up.push(Op::AddFdb {
                netns: netns.to_owned(),
                mac: entry.mac,
                vtep: entry.vtep,
            });
        }
    }

    fn host(&mut self) {
        let desired = self.desired;
        let host = &self.observed.host;
        let gw = &desired.gateway;
        let ports: BTreeSet<IfName> = desired
            .tasks
            .values()
            .filter(|t| t.egress.is_some())
            .map(|t| t.id.gateway_port())
            .collect();
        let removed: BTreeSet<IfName> = self
            .removed_tasks
            .iter()
            .map(|s| gateway_port_of_short(s))
            .collect();
        for name in host.gateway_ports.keys() {
            if !ports.contains(name)
                && !removed.contains(name)
                && !self.removed_gateway_ports.contains(name)
            {
                self.host_down.push(Op::RemoveLink {
                    at: At::Host,
                    ifname: name.clone(),
                });
            }
        }
        for name in &host.staging_vxlans {
            self.host_down.push(Op::RemoveLink {
                at: At::Host,
                ifname: name.clone(),
            });
        }
        if ports.is_empty() {
            if host.masquerade.is_some() {
                self.host_down.push(Op::RemoveMasquerade {
                    table: gw.nft_table.clone(),
                });
            }
            if host.gateway_bridge.is_some() {
                self.host_down.push(Op::RemoveLink {
                    at: At::Host,
                    ifname: gw.bridge.clone(),
                });
            }
            return;
        }
        let bridge_ok = host.gateway_bridge.as_ref().is_some_and(|l| {
            l.kind == LinkKind::Bridge && l.mtu == gw.mtu && l.up && l.has_only_address(gw.address)
        });
        if !bridge_ok || !host.ip_forward {
            self.host_up.push(Op::EnsureGatewayBridge {
                bridge: gw.bridge.clone(),
                address: gw.address,
                mtu: gw.mtu,
            });
        }
        let masquerade = Masquerade {
            table: gw.nft_table.clone(),
            source: gw.subnet(),
            bridge: gw.bridge.clone(),
        };
        if host.masquerade.as_ref() != Some(&masquerade) {
            self.host_up.push(Op::EnsureMasquerade(masquerade));
        }
    }
}

/// A veth end that is up with the right MTU.
fn veth_ok(link: &LinkState, mtu: u32) -> bool {
    link.kind == LinkKind::Veth && link.mtu == mtu && link.up
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
