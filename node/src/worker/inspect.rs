//! `mesh network inspect --verbose` on one node: the network's FDB and neighbor entries and
//! one local task's load balancer as the kernel holds them, each compared with what the
//! agent wants there, differences flagged (`missing`: wanted, not in the kernel; `stray`: in
//! the kernel, not wanted). Read on demand, never cached.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use mesh_dataplane::kernel::Kernel;
use mesh_dataplane::overlay::Vni;
use mesh_proto::{KernelEntry, NodeNetworkState};

use super::endpoints::EndpointTable;
use super::sandboxes::Sandboxes;
use mesh_common::ids::NetworkId;

/// Entries of one kind, wanted and as the kernel has them, as (key, value) pairs.
pub fn compare(
    wanted: &BTreeSet<(String, String)>,
    kernel: &BTreeSet<(String, String)>,
) -> Vec<KernelEntry> {
    wanted
        .union(kernel)
        .map(|(key, value)| {
            let pair = (key.clone(), value.clone());
            let state = match (wanted.contains(&pair), kernel.contains(&pair)) {
                (true, true) => "ok",
                (true, false) => "missing",
                _ => "stray",
            };
            KernelEntry {
                key: key.clone(),
                value: value.clone(),
                state: state.into(),
            }
        })
        .collect()
}

/// What the worker's parts say of one network on this node.
pub struct Parts<'a> {
    pub kernel: &'a dyn Kernel,
    pub sandboxes: &'a Sandboxes,
    pub endpoints: &'a EndpointTable,
    pub network: &'a NetworkId,
    pub vni: Vni,
    /// The network's subnet: VIPs in it belong to this network.
    pub subnet: Option<ipnet::Ipv4Net>,
    /// A namespace of a local task on the network, whose load balancer is read.
    pub lb_netns: Option<String>,
}

/// The node's report for `parts.network` (identity fields left for the caller).
pub fn network_state(parts: &Parts<'_>) -> NodeNetworkState {
    let mut out = NodeNetworkState::default();
    let desired = &parts.sandboxes.desired;
    out.has_sandbox = parts.sandboxes.has_network(parts.vni);
    let remotes: Vec<_> = desired
        .remotes
        .values()
        .filter(|r| r.vni == parts.vni && desired.is_programmed(r))
        .collect();
    let want_fdb: BTreeSet<(String, String)> = remotes
        .iter()
        .map(|r| (r.mac.to_string(), r.vtep.to_string()))
        .collect();
    let want_neigh: BTreeSet<(String, String)> = remotes
        .iter()
        .map(|r| (r.ip.to_string(), r.mac.to_string()))
        .collect();
    let (mut fdb, mut neigh) = (BTreeSet::new(), BTreeSet::new());
    match parts.kernel.overlay().observe(&desired.scope()) {
        Ok(observed) => {
            if let Some(ns) = observed.networks.get(&parts.vni) {
                for e in ns.fdb.values().flatten() {
                    fdb.insert((e.mac.to_string(), e.vtep.to_string()));
                }
                for (ip, mac) in ns.neighbors.values().flatten() {
                    neigh.insert((ip.to_string(), mac.to_string()));
                }
            }
        }
        Err(e) => out.error = format!("cannot read the overlay: {e:#}"),
    }
    let peers: BTreeSet<&String> = fdb.iter().map(|(_, vtep)| vtep).collect();
    out.peers = peers.into_iter().cloned().collect();
    out.fdb = compare(&want_fdb, &fdb);
    out.neighbors = compare(&want_neigh, &neigh);
    if let Some(netns) = &parts.lb_netns {
        let in_network = |ip: &Ipv4Addr| parts.subnet.is_none_or(|s| s.contains(ip));
        let want: BTreeSet<(String, String)> = parts
            .endpoints
            .lb_services(parts.network)
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| (s.vip.to_string(), b.to_string()))
            })
            .collect();
        match parts.kernel.lb().observe(netns) {
            Ok(table) => {
                let have: BTreeSet<(String, String)> = table
                    .services
                    .values()
                    .filter(|s| in_network(&s.vip))
                    .flat_map(|s| {
                        s.backends
                            .iter()
                            .map(|b| (s.vip.to_string(), b.to_string()))
                    })
                    .collect();
                out.lb = compare(&want, &have);
            }
            Err(e) => out.error = format!("cannot read the load balancer of {netns}: {e:#}"),
        }
        out.lb_namespace = netns.clone();
    }
    out.differences = [&out.fdb, &out.neighbors, &out.lb]
        .iter()
        .flat_map(|v| v.iter())
        .filter(|e| e.state != "ok")
        .count() as u32;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn entries_are_ok_missing_or_stray() {
        let wanted = set(&[
            ("02:42:0a:00:00:03", "10.0.0.2"),
            ("02:42:0a:00:00:04", "10.0.0.3"),
        ]);
        let kernel = set(&[
            ("02:42:0a:00:00:03", "10.0.0.2"),
            ("02:42:0a:00:00:09", "10.0.0.9"),
        ]);
        let got: Vec<(String, String)> = compare(&wanted, &kernel)
            .into_iter()
            .map(|e| (e.key, e.state))
            .collect();
        assert_eq!(
            got,
            [
                ("02:42:0a:00:00:03".into(), "ok".into()),
                ("02:42:0a:00:00:04".into(), "missing".into()),
                ("02:42:0a:00:00:09".into(), "stray".into()),
            ]
        );
        // An entry pointing at the wrong VTEP is both: the wanted one missing, the kernel's
        // stray.
        let moved = set(&[("02:42:0a:00:00:03", "10.0.0.7")]);
        let states: Vec<String> = compare(&set(&[("02:42:0a:00:00:03", "10.0.0.2")]), &moved)
            .into_iter()
            .map(|e| format!("{}>{}:{}", e.key, e.value, e.state))
            .collect();
        assert_eq!(
            states,
            [
                "02:42:0a:00:00:03>10.0.0.2:missing",
                "02:42:0a:00:00:03>10.0.0.7:stray"
            ]
        );
    }
}
