//! The routing mesh on the real kernel: observes and applies with `nft`, rtnetlink and
//! `/proc/sys`, from the daemon's namespace.
//!
//! Each call runs on one fresh OS thread in the daemon's namespace with a netlink
//! [`Session`] (one socket per namespace it needs); sysctls of a named namespace are read and
//! written by a short-lived thread inside it, tables by `nft` started inside it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use netlink_packet_route::link::LinkAttribute;

use crate::error::{Error, Result};
use crate::ingress::RoutingMesh;
use crate::ingress::model::{
    REPLY_RULE_PRIORITY, REPLY_TABLE, SANDBOX_SNAT_TABLE, Scope, Sysctl, is_reply_table,
    reply_sysctls,
};
use crate::ingress::nft::{
    parse_publish, parse_reply, parse_snat, publish_script, reply_script, udp_snat_script,
};
use crate::ingress::observed::{Observed, ObservedNode, ObservedSandbox, ObservedTask, Table};
use crate::ingress::plan::Op;
use crate::netlink::{MAIN_TABLE, Netlink, Session};
use crate::netns::{At, Netns};
use crate::nft;
use crate::sysctl;
use crate::types::{IfName, Ipv4Cidr};

/// The routing mesh on the real kernel, run from the daemon's namespace.
#[derive(Debug)]
pub struct LinuxMesh {
    host: Netns,
}

impl LinuxMesh {
    /// A routing mesh whose daemon namespace is `host`: the publication table and the route of
    /// the ingress subnet live there.
    pub fn new(host: Netns) -> LinuxMesh {
        LinuxMesh { host }
    }

    /// A routing mesh in the calling thread's namespace.
    pub fn current() -> Result<LinuxMesh> {
        Ok(LinuxMesh::new(Netns::current()?))
    }

    /// The daemon's namespace.
    pub fn host(&self) -> &Netns {
        &self.host
    }
}

impl RoutingMesh for LinuxMesh {
    fn observe(&self, scope: &Scope) -> Result<Observed> {
        nft::check_table_name(&scope.publish_table)?;
        let publications = table(&self.host, &scope.publish_table, parse_publish)?;
        self.host.run_async(async || {
            let mut s = Session::open(&self.host)?;
            let routes = gateway_routes(s.home(), &scope.bridge).await?;
            let node = ObservedNode {
                publications,
                routes,
                sysctls: read_sysctls(None, &scope.host_sysctls)?,
            };
            let mut observed = Observed {
                node,
                ..Observed::default()
            };
            if let Some(sandbox) = &scope.sandbox
                && let Some(ns) = open_if_exists(&mut s, &sandbox.netns)?
            {
                observed.sandbox = Some(ObservedSandbox {
                    sysctls: read_sysctls(Some(ns), &sandbox.sysctls())?,
                    snat: table(ns, SANDBOX_SNAT_TABLE, parse_snat)?,
                });
            }
            for (netns, iface) in &scope.tasks {
                if open_if_exists(&mut s, netns)?.is_none() {
                    continue;
                }
                let (ns, nl) = s.opened(netns);
                let task = ObservedTask {
                    sysctls: read_sysctls(Some(ns), &reply_sysctls(iface))?,
                    reply: table(ns, REPLY_TABLE, parse_reply)?,
                    rules: nl.fwmark_rules(REPLY_RULE_PRIORITY).await?,
                    routes: reply_routes(nl).await?,
                };
                observed.tasks.insert(netns.clone(), task);
            }
            Ok(observed)
        })?
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.host.run_async(async || {
            let mut s = Session::open(&self.host)?;
            for op in ops {
                apply_one(&mut s, op).await.map_err(|source| Error::Apply {
                    op: op.to_string(),
                    source: Box::new(source),
                })?;
                tracing::debug!(%op, "applied");
            }
            Ok(())
        })?
    }
}

async fn apply_one(s: &mut Session<'_>, op: &Op) -> Result<()> {
    match op {
        Op::SetSysctl { at, sysctl } => match at {
            At::Host => sysctl::write(&sysctl.path(), sysctl.wanted()),
            At::Netns(name) => sysctl::write_in(s.named(name)?.0, &sysctl.path(), sysctl.wanted()),
        },
        Op::ReplaceSnatTable { netns, from, to } => {
            nft::run_script(s.named(netns)?.0, &udp_snat_script(from, to))
        }
        Op::ReplaceRoute {
            at,
            table,
            dst,
            via,
            dev,
        } => s.at(at)?.replace_route(*table, *dst, *via, dev).await,
        Op::RemoveRoute { at, table, dst } => match s.at_if_exists(at)? {
            Some(nl) => nl.remove_route(*table, *dst).await,
            None => Ok(()),
        },
        Op::ReplacePublishTable {
            table,
            publications,
        } => {
            nft::check_table_name(table)?;
            nft::run_script(s.home_ns(), &publish_script(table, publications))
        }
        Op::RemovePublishTable { table } => nft::remove_table(s.home_ns(), table),
        Op::FlushPublished { protocol, port } => {
            crate::lb::conntrack::flush_dnat_port(s.home_ns(), protocol.as_str(), *port).map(|_| ())
        }
        Op::ReplaceReplyTable {
            netns,
            iface,
            sandboxes,
        } => nft::run_script(s.named(netns)?.0, &reply_script(iface, sandboxes)),
        Op::AddReplyRule { netns, mark } => {
            s.at(&At::Netns(netns.clone()))?
                .add_fwmark_rule(*mark, *mark, REPLY_RULE_PRIORITY)
                .await
        }
        Op::RemoveReplyRule { netns, mark } => match s.at_if_exists(&At::Netns(netns.clone()))? {
            Some(nl) => nl.remove_fwmark_rule(*mark, REPLY_RULE_PRIORITY).await,
            None => Ok(()),
        },
    }
}

/// The namespace `name` opened in the session, or `None` if it does not exist.
fn open_if_exists<'s>(s: &'s mut Session<'_>, name: &str) -> Result<Option<&'s Netns>> {
    match s.open_named(name) {
        Ok(()) => Ok(Some(s.opened(name).0)),
        Err(e) if e.is_missing_netns() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Our table `name` in `ns`, read back by `parse`.
fn table<T>(ns: &Netns, name: &str, parse: fn(&[u8]) -> Table<T>) -> Result<Table<T>> {
    Ok(nft::list_table(ns, name, true)?.map_or(Table::Absent, |json| parse(&json)))
}

/// The values of `sysctls` in `ns` (the calling thread's namespace if `None`); a file that does
/// not exist (its link does not) is left out.
fn read_sysctls(ns: Option<&Netns>, sysctls: &[Sysctl]) -> Result<BTreeMap<Sysctl, String>> {
    let paths: Vec<String> = sysctls.iter().map(Sysctl::path).collect();
    let values = match ns {
        Some(ns) => sysctl::read_in(ns, &paths)?,
        None => paths
            .iter()
            .map(|p| sysctl::read(p))
            .collect::<Result<_>>()?,
    };
    Ok(sysctls
        .iter()
        .cloned()
        .zip(values)
        .filter_map(|(s, v)| Some((s, v?)))
        .collect())
}

/// Interface names by index.
async fn link_names(nl: &Netlink) -> Result<HashMap<u32, IfName>> {
    Ok(nl
        .dump_links()
        .await?
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some((m.header.index, IfName::new(n.as_str()).ok()?)),
                _ => None,
            })
        })
        .collect())
}

/// Routes of the main table with a gateway out of `bridge`: ours (the bridge is).
async fn gateway_routes(nl: &Netlink, bridge: &IfName) -> Result<BTreeMap<Ipv4Cidr, Ipv4Addr>> {
    let Some(index) = nl.link_index(bridge).await? else {
        return Ok(BTreeMap::new());
    };
    Ok(nl
        .ipv4_routes()
        .await?
        .into_iter()
        .filter(|r| r.table == MAIN_TABLE && r.oif == Some(index))
        .filter_map(|r| Some((r.dst?, r.gateway?)))
        .collect())
}

/// Default routes of the reply tables: table -> (via, device).
async fn reply_routes(nl: &Netlink) -> Result<BTreeMap<u32, (Ipv4Addr, IfName)>> {
    let names = link_names(nl).await?;
    Ok(nl
        .ipv4_routes()
        .await?
        .into_iter()
        .filter(|r| is_reply_table(r.table) && r.dst.is_none())
        .filter_map(|r| Some((r.table, (r.gateway?, names.get(&r.oif?)?.clone()))))
        .collect())
}
