//! The observed model: what the kernel (or the fake) holds of the routing mesh in a
//! [`Scope`](crate::ingress::Scope), read into one shape by both implementations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::ingress::model::{NodeMesh, Publication, Sysctl, reply_mark};
use crate::types::{IfName, Ipv4Cidr, Mac};

/// One of our nftables tables as found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Table<T> {
    #[default]
    Absent,
    /// It holds exactly what our script for `T` writes.
    Ours(T),
    /// It exists but holds something else (changed by hand, or by another version): the plan
    /// rewrites it.
    Other,
}

/// An ingress sandbox's UDP source NAT: from the gateway bridge onto the ingress overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snat {
    pub from: IfName,
    pub to: IfName,
}

/// A task's reply-marking table: connections entering by `iface` are marked by the source MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTable {
    pub iface: IfName,
    /// Sandbox MAC -> mark.
    pub marks: BTreeMap<Mac, u32>,
}

/// The daemon's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedNode {
    pub publications: Table<BTreeSet<Publication>>,
    /// Routes of the main table with a gateway out of the gateway bridge: destination -> via.
    pub routes: BTreeMap<Ipv4Cidr, Ipv4Addr>,
    /// The sysctls of the scope, by value; absent if there is no such file (no such link).
    pub sysctls: BTreeMap<Sysctl, String>,
}

/// The ingress sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedSandbox {
    pub sysctls: BTreeMap<Sysctl, String>,
    pub snat: Table<Snat>,
}

/// One task's reply routing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedTask {
    pub sysctls: BTreeMap<Sysctl, String>,
    pub reply: Table<ReplyTable>,
    /// Policy rules at the reply priority: fwmark -> table.
    pub rules: BTreeMap<u32, u32>,
    /// Default routes of the reply tables: table -> (via, device).
    pub routes: BTreeMap<u32, (Ipv4Addr, IfName)>,
}

/// Everything in the scope. Named namespaces that do not exist are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub node: ObservedNode,
    pub sandbox: Option<ObservedSandbox>,
    /// By task namespace.
    pub tasks: BTreeMap<String, ObservedTask>,
}

/// Each of `sysctls` at its wanted value.
fn wanted(sysctls: Vec<Sysctl>) -> BTreeMap<Sysctl, String> {
    sysctls
        .into_iter()
        .map(|s| {
            let value = s.wanted().to_owned();
            (s, value)
        })
        .collect()
}

impl Observed {
    /// What a kernel that holds exactly `desired` shows when observed in `desired.scope()`:
    /// what the agent may plan its next change against instead of observing again.
    pub fn converged(desired: &NodeMesh) -> Observed {
        let node = ObservedNode {
            publications: match &desired.publications {
                Some(p) => Table::Ours(p.clone()),
                None => Table::Absent,
            },
            routes: desired.route.iter().map(|r| (r.subnet, r.via)).collect(),
            sysctls: wanted(desired.host_sysctls()),
        };
        let sandbox = desired.sandbox.as_ref().map(|s| ObservedSandbox {
            sysctls: wanted(s.sysctls()),
            snat: Table::Ours(Snat {
                from: s.gateway.clone(),
                to: s.overlay.clone(),
            }),
        });
        let tasks = desired
            .replies
            .iter()
            .map(|(netns, r)| {
                let marks = r.marks();
                let task = ObservedTask {
                    sysctls: wanted(r.sysctls()),
                    reply: Table::Ours(reply_table(r.iface.clone(), &r.sandboxes)),
                    rules: marks.keys().map(|m| (*m, *m)).collect(),
                    routes: marks
                        .iter()
                        .map(|(m, ip)| (*m, (*ip, r.iface.clone())))
                        .collect(),
                };
                (netns.clone(), task)
            })
            .collect();
        Observed {
            node,
            sandbox,
            tasks,
        }
    }
}

/// The reply table that marks connections from `sandboxes` entering by `iface`.
pub fn reply_table(iface: IfName, sandboxes: &BTreeSet<(Ipv4Addr, Mac)>) -> ReplyTable {
    ReplyTable {
        iface,
        marks: sandboxes
            .iter()
            .map(|(ip, mac)| (*mac, reply_mark(*ip)))
            .collect(),
    }
}
