//! The pure planner: desired + observed routing mesh -> the operations that make them equal.
//!
//! # Cost
//! What is right is not touched, and each part of the mesh has ops of its own: changing the
//! publications rewrites the publication table only; a sandbox joining or leaving rewrites
//! each task's reply table and adds or removes that sandbox's rule and route, nothing of the
//! other sandboxes; a new task costs its own reply routing.
//!
//! # Order
//! As the routing mesh is built: the ingress sandbox as a router, then the node's route of the
//! ingress subnet, then the published ports (`route_localnet` before the table), then each
//! task's reply routing (sysctls, table, stale rules and routes, then wanted ones).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use crate::error::Result;
use crate::ingress::model::{NodeMesh, Protocol, Publication, REPLY_RULE_PRIORITY, Sysctl};
use crate::ingress::observed::{Observed, ObservedTask, Snat, Table, reply_table};
use crate::netlink::MAIN_TABLE;
use crate::netns::At;
use crate::types::{IfName, Ipv4Cidr, Mac};

/// One change to the kernel. Every op is idempotent: applying it twice is applying it once,
/// and `Remove*` of something absent (or in an absent namespace) is success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes the sysctl's wanted value.
    SetSysctl { at: At, sysctl: Sysctl },
    /// Replaces the sandbox's table `ip mesh_snat` by one that source-NATs UDP forwarded from
    /// `from` onto `to`.
    ReplaceSnatTable {
        netns: String,
        from: IfName,
        to: IfName,
    },
    /// Sets the route to `dst` (the default route if `None`) of routing table `table`.
    ReplaceRoute {
        at: At,
        table: u32,
        dst: Option<Ipv4Cidr>,
        via: Ipv4Addr,
        dev: IfName,
    },
    /// Deletes the route to `dst` (the default route if `None`) of routing table `table`.
    RemoveRoute {
        at: At,
        table: u32,
        dst: Option<Ipv4Cidr>,
    },
    /// Replaces the node's publication table by one holding exactly these ports.
    ReplacePublishTable {
        table: String,
        publications: Vec<Publication>,
    },
    /// Deletes the node's publication table.
    RemovePublishTable { table: String },
    /// Deletes the conntrack entries of connections a publication that is gone had
    /// translated (the port's destination-NATed flows), so none keeps going to the old target:
    /// a UDP flow would never end, and a port that is free again must be free at once.
    FlushPublished { protocol: Protocol, port: u16 },
    /// Replaces the task's table `ip mesh_reply` by one marking connections from `sandboxes`
    /// entering by `iface`.
    ReplaceReplyTable {
        netns: String,
        iface: IfName,
        sandboxes: Vec<(Ipv4Addr, Mac)>,
    },
    /// Adds the rule `fwmark <mark> lookup <mark>` at the reply priority.
    AddReplyRule { netns: String, mark: u32 },
    /// Deletes the rule for `mark` at the reply priority.
    RemoveReplyRule { netns: String, mark: u32 },
}

fn route_name(table: u32, dst: &Option<Ipv4Cidr>) -> String {
    let dst = dst.map_or_else(|| "default".to_owned(), |d| d.to_string());
    match table {
        MAIN_TABLE => dst,
        t => format!("{dst} table {t:#x}"),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SetSysctl { at, sysctl } => write!(f, "set {sysctl} in {at}"),
            Op::ReplaceSnatTable { netns, from, to } => {
                write!(f, "replace udp snat from {from} to {to} in {netns}")
            }
            Op::ReplaceRoute {
                at,
                table,
                dst,
                via,
                dev,
            } => write!(
                f,
                "replace route {} via {via} dev {dev} in {at}",
                route_name(*table, dst)
            ),
            Op::RemoveRoute { at, table, dst } => {
                write!(f, "remove route {} in {at}", route_name(*table, dst))
            }
            Op::ReplacePublishTable {
                table,
                publications,
            } => write!(
                f,
                "replace table ip {table} with {} published ports",
                publications.len()
            ),
            Op::RemovePublishTable { table } => write!(f, "remove table ip {table}"),
            Op::FlushPublished { protocol, port } => write!(
                f,
                "flush destination-NATed {}/{port} flows",
                protocol.as_str()
            ),
            Op::ReplaceReplyTable {
                netns,
                iface,
                sandboxes,
            } => write!(
                f,
                "replace reply marks of {} sandboxes on {iface} in {netns}",
                sandboxes.len()
            ),
            Op::AddReplyRule { netns, mark } => write!(
                f,
                "add rule fwmark {mark:#x} priority {REPLY_RULE_PRIORITY} in {netns}"
            ),
            Op::RemoveReplyRule { netns, mark } => write!(
                f,
                "remove rule fwmark {mark:#x} priority {REPLY_RULE_PRIORITY} in {netns}"
            ),
        }
    }
}

/// The ops that turn `observed` into `desired` (see the module doc for their cost and order).
/// Refuses a `desired` that [`NodeMesh::validate`] refuses.
pub fn plan(desired: &NodeMesh, observed: &Observed) -> Result<Vec<Op>> {
    desired.validate()?;
    let mut ops = Vec::new();
    let host = At::Host;

    if let Some(sandbox) = &desired.sandbox {
        let at = At::Netns(sandbox.netns.clone());
        let o = observed.sandbox.clone().unwrap_or_default();
        sysctls(&mut ops, &at, sandbox.sysctls(), &o.sysctls);
        let snat = Snat {
            from: sandbox.gateway.clone(),
            to: sandbox.overlay.clone(),
        };
        if o.snat != Table::Ours(snat) {
            ops.push(Op::ReplaceSnatTable {
                netns: sandbox.netns.clone(),
                from: sandbox.gateway.clone(),
                to: sandbox.overlay.clone(),
            });
        }
    }

    let node = &observed.node;
    let wanted_subnet = desired.route.map(|r| r.subnet);
    for dst in node.routes.keys().filter(|d| Some(**d) != wanted_subnet) {
        ops.push(Op::RemoveRoute {
            at: host.clone(),
            table: MAIN_TABLE,
            dst: Some(*dst),
        });
    }
    if let Some(route) = desired.route
        && node.routes.get(&route.subnet) != Some(&route.via)
    {
        ops.push(Op::ReplaceRoute {
            at: host.clone(),
            table: MAIN_TABLE,
            dst: Some(route.subnet),
            via: route.via,
            dev: desired.bridge.clone(),
        });
    }

    sysctls(&mut ops, &host, desired.host_sysctls(), &node.sysctls);
    let before: Vec<Publication> = match &node.publications {
        Table::Ours(old) => old.iter().copied().collect(),
        _ => Vec::new(),
    };
    let after: Vec<Publication> = desired.publications.iter().flatten().copied().collect();
    match &desired.publications {
        Some(pubs) if node.publications != Table::Ours(pubs.clone()) => {
            ops.push(Op::ReplacePublishTable {
                table: desired.publish_table.clone(),
                publications: pubs.iter().copied().collect(),
            });
        }
        None if node.publications != Table::Absent => ops.push(Op::RemovePublishTable {
            table: desired.publish_table.clone(),
        }),
        _ => {}
    }
    // Flows of a port that is no longer published, or that now goes elsewhere, after the
    // table no longer translates new ones.
    for old in &before {
        if !after.contains(old) {
            ops.push(Op::FlushPublished {
                protocol: old.protocol,
                port: old.published,
            });
        }
    }

    for (netns, reply) in &desired.replies {
        let at = At::Netns(netns.clone());
        let o = observed.tasks.get(netns).cloned().unwrap_or_default();
        sysctls(&mut ops, &at, reply.sysctls(), &o.sysctls);
        if o.reply != Table::Ours(reply_table(reply.iface.clone(), &reply.sandboxes)) {
            ops.push(Op::ReplaceReplyTable {
                netns: netns.clone(),
                iface: reply.iface.clone(),
                sandboxes: reply.sandboxes.iter().copied().collect(),
            });
        }
        reply_routes(&mut ops, netns, &reply.iface, &reply.marks(), &o);
    }
    Ok(ops)
}

/// The sysctls of `wanted` that `observed` does not hold at their wanted value, in order.
fn sysctls(ops: &mut Vec<Op>, at: &At, wanted: Vec<Sysctl>, observed: &BTreeMap<Sysctl, String>) {
    for sysctl in wanted {
        if observed.get(&sysctl).map(String::as_str) != Some(sysctl.wanted()) {
            ops.push(Op::SetSysctl {
                at: at.clone(),
                sysctl,
            });
        }
    }
}

/// The rules and routes of one task: those of sandboxes that left go, missing or wrong ones
/// are (re)made.
fn reply_routes(
    ops: &mut Vec<Op>,
    netns: &str,
    iface: &IfName,
    marks: &BTreeMap<u32, Ipv4Addr>,
    o: &ObservedTask,
) {
    let at = At::Netns(netns.to_owned());
    let present: BTreeSet<u32> = o.rules.keys().chain(o.routes.keys()).copied().collect();
    for mark in present.iter().filter(|m| !marks.contains_key(m)) {
        if o.rules.contains_key(mark) {
            ops.push(Op::RemoveReplyRule {
                netns: netns.to_owned(),
                mark: *mark,
            });
        }
        if o.routes.contains_key(mark) {
            ops.push(Op::RemoveRoute {
                at: at.clone(),
                table: *mark,
                dst: None,
            });
        }
    }
    for (mark, via) in marks {
        if o.routes.get(mark) != Some(&(*via, iface.clone())) {
            ops.push(Op::ReplaceRoute {
                at: at.clone(),
                table: *mark,
                dst: None,
                via: *via,
                dev: iface.clone(),
            });
        }
        match o.rules.get(mark) {
            Some(table) if table == mark => {}
            found => {
                if found.is_some() {
                    ops.push(Op::RemoveReplyRule {
                        netns: netns.to_owned(),
                        mark: *mark,
                    });
                }
                ops.push(Op::AddReplyRule {
                    netns: netns.to_owned(),
                    mark: *mark,
                });
            }
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
