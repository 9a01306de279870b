//! Load balancing of service VIPs over task IPs, programmed inside one network namespace.
//!
//! Every service has a VIP on each overlay network it is attached to. Inside a task's
//! namespace, a connection the task opens to `VIP:port` is sent by the kernel to one of the
//! service's task IPs (its *backends*) on the same port, for every TCP and UDP port (as
//! Swarm's VIPs do). The translation happens in the output path of that namespace, and the
//! replies are un-translated by the same namespace, so no source NAT is needed and the backend
//! sees the real client address.
//!
//! # Layout
//! - this module: the intent model ([`LbService`], [`LbTable`]), the changes ([`LbChange`]),
//!   the pure planner [`plan`], the [`LoadBalancer`] trait with [`reconcile`], and the choice
//!   of backend ([`Backend`], [`detect`]).
//! - [`nft`]: [`NftLb`], DNAT with `numgen inc` over one map per service (nftables).
//! - [`ipvs`]: [`IpvsLb`], IPVS fwmark services driven over generic netlink (the family is
//!   written by hand in [`ipvs::msg`]); nftables only marks the VIP's packets.
//! - [`conntrack`]: deleting the conntrack entries of removed backends.
//! - `fake` (feature `fake`): `FakeLb`, in memory, on the shared fake kernel
//!   (`crate::fake`); its tables, flows and flushes can be inspected.
//! - `conformance` (feature `fake`): the suite [`NftLb`] and the fake both pass (the Linux run
//!   is the `lb_conformance` integration test).
//!
//! # Cost
//! Changing one service costs work proportional to that service only: one `nft -f`
//! transaction touching that service's map and chain (and, with IPVS, the service's
//! destinations). No call rebuilds or lists the whole ruleset except [`LoadBalancer::observe`],
//! which [`reconcile`] uses at start-up.
//!
//! # Idle connections
//! - nftables: established TCP flows live as long as conntrack keeps them, 5 days idle
//!   (`nf_conntrack_tcp_timeout_established`), so idle connections through a VIP are not cut
//!   (Swarm's IPVS cuts them at 900 s, moby#31208).
//! - IPVS: [`IpvsLb`] sets the namespace's IPVS timeouts (TCP 86400 s, FIN 120 s, UDP 300 s
//!   by default, see [`ipvs::IpvsTimeouts`]) instead of the 900 s default.
//!
//! # Cost of a change, measured (examples/lb_bench.rs, 2-core machine)
//! One backend change with `nft`: about 20 ms with 10 services, 28 ms with 1,000 services of
//! 10 backends. The transaction is the same dozen statements either way; the difference is
//! `nft` itself, which reads the table's object list to build its cache on every run.
//!
//! # Stale flows of removed backends
//! Removing a backend stops new flows to it at once, but conntrack (and IPVS's own connection
//! table) keeps sending an existing flow where it went: harmless for TCP (the task is going
//! away and the client sees a reset), a black hole for UDP "flows" that never end. Call
//! [`LoadBalancer::flush_conntrack`] with the removed IPs after the change.
//!
//! # Use
//! The agent keeps one desired [`LbTable`] per task namespace, calls [`reconcile`] when it
//! (re)starts and [`LoadBalancer::apply`] with one [`LbChange`] when a service's backends
//! change, naming the namespace. Switching a namespace from one backend to the other:
//! [`LoadBalancer::clear`] with the old one first (both keep their objects in `table ip
//! mesh_lb`). The methods block (they spawn `nft` or talk netlink on a thread of their own):
//! from async code call them inside `tokio::task::spawn_blocking`. Calls for one namespace must
//! not overlap.

#[cfg(any(test, feature = "fake"))]
pub mod conformance;
pub mod conntrack;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod ipvs;
pub mod nft;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Error, Result};

pub use ipvs::{IpvsLb, IpvsTimeouts};
pub use nft::NftLb;

/// The nftables table (family `ip`) that holds our load-balancing objects in each namespace.
pub const TABLE: &str = "mesh_lb";

/// The backend address an observation reports for a service whose kernel objects are
/// inconsistent (half written, or changed by someone else). No desired service has it, so
/// [`plan`] rewrites (or removes) such a service.
pub const BROKEN: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// One service as seen from one namespace: its VIP and the task IPs behind it. Every TCP and
/// UDP port of the VIP maps to the same port on the chosen backend. No backends: connections to
/// the VIP are refused (TCP reset, ICMP port unreachable) instead of hanging.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LbService {
    pub vip: Ipv4Addr,
    pub backends: BTreeSet<Ipv4Addr>,
}

impl LbService {
    pub fn new(vip: Ipv4Addr, backends: impl IntoIterator<Item = Ipv4Addr>) -> LbService {
        LbService {
            vip,
            backends: backends.into_iter().collect(),
        }
    }
}

/// All services reachable from one namespace, by VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbTable {
    pub services: BTreeMap<Ipv4Addr, LbService>,
}

impl LbTable {
    pub fn new() -> LbTable {
        LbTable::default()
    }

    /// Inserts or replaces the service of `service.vip`; returns the one replaced.
    pub fn upsert(&mut self, service: LbService) -> Option<LbService> {
        self.services.insert(service.vip, service)
    }

    /// Removes the service of `vip`; returns it.
    pub fn remove(&mut self, vip: Ipv4Addr) -> Option<LbService> {
        self.services.remove(&vip)
    }

    pub fn get(&self, vip: Ipv4Addr) -> Option<&LbService> {
        self.services.get(&vip)
    }

    /// Every backend address of every service.
    pub fn backends(&self) -> BTreeSet<Ipv4Addr> {
        self.services
            .values()
            .flat_map(|s| s.backends.iter().copied())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

impl FromIterator<LbService> for LbTable {
    fn from_iter<I: IntoIterator<Item = LbService>>(iter: I) -> LbTable {
        LbTable {
            services: iter.into_iter().map(|s| (s.vip, s)).collect(),
        }
    }
}

/// One change to the services of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbChange {
    /// Create the service, or replace its backends (atomically: a connection made during the
    /// change goes to a backend of the old set or of the new one, never nowhere).
    Upsert(LbService),
    /// Delete the service of this VIP; absent is success.
    Remove(Ipv4Addr),
}

impl LbChange {
    /// The VIP this change is about.
    pub fn vip(&self) -> Ipv4Addr {
        match self {
            LbChange::Upsert(s) => s.vip,
            LbChange::Remove(vip) => *vip,
        }
    }
}

impl fmt::Display for LbChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbChange::Upsert(s) => {
                write!(f, "upsert vip {} ({} backends)", s.vip, s.backends.len())
            }
            LbChange::Remove(vip) => write!(f, "remove vip {vip}"),
        }
    }
}

/// A kernel mechanism that balances VIPs inside a namespace.
///
/// Namespaces are named (as under `/run/netns`); an implementation opens the namespace itself
/// for each call, and one that does not exist is an error naming it. Object-safe.
pub trait LoadBalancer: Send + Sync {
    /// Reads our services in the namespace `netns` (and nothing that is not ours).
    fn observe(&self, netns: &str) -> Result<LbTable>;

    /// Applies `changes` in `netns`. Each change touches only the objects of its own VIP.
    fn apply(&self, netns: &str, changes: &[LbChange]) -> Result<()>;

    /// Deletes the conntrack entries (and, for IPVS, connection entries) of flows that were
    /// sent to one of `backends`, so they pick a live backend on their next packet.
    fn flush_conntrack(&self, netns: &str, backends: &BTreeSet<Ipv4Addr>) -> Result<()>;

    /// Removes everything of ours from `netns` (our table, our IPVS services).
    fn clear(&self, netns: &str) -> Result<()>;
}

/// The changes that turn `observed` into `desired`: an upsert for each service that is missing
/// or has other backends, a removal for each observed VIP no longer desired. Pure; ordered by
/// VIP; empty when converged.
pub fn plan(desired: &LbTable, observed: &LbTable) -> Vec<LbChange> {
    let mut changes = Vec::new();
    for (vip, want) in &desired.services {
        if observed.services.get(vip) != Some(want) {
            changes.push(LbChange::Upsert(want.clone()));
        }
    }
    for vip in observed.services.keys() {
        if !desired.services.contains_key(vip) {
            changes.push(LbChange::Remove(*vip));
        }
    }
    changes.sort_by_key(LbChange::vip);
    changes
}

/// Observes `netns`, plans and applies: afterwards the namespace holds exactly `desired` (a
/// second call finds nothing to do). Returns the changes applied.
pub fn reconcile(
    lb: &(impl LoadBalancer + ?Sized),
    netns: &str,
    desired: &LbTable,
) -> Result<Vec<LbChange>> {
    let observed = lb.observe(netns)?;
    let changes = plan(desired, &observed);
    if !changes.is_empty() {
        tracing::debug!(netns, changes = changes.len(), "reconcile load balancer");
        lb.apply(netns, &changes)?;
    }
    Ok(changes)
}

/// Which kernel mechanism balances VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// IPVS fwmark services (what Swarm uses); needs `CONFIG_IP_VS`.
    Ipvs,
    /// nftables DNAT over `numgen` maps (what kube-proxy moved to).
    Nftables,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Ipvs => "ipvs",
            Backend::Nftables => "nftables",
        }
    }

    /// A load balancer of this kind with its default settings.
    pub fn load_balancer(self) -> Box<dyn LoadBalancer + Send + Sync> {
        match self {
            Backend::Ipvs => Box::new(IpvsLb::default()),
            Backend::Nftables => Box::new(NftLb::new()),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = Error;

    /// `ipvs`, or `nftables` (also `nft`), in any case.
    fn from_str(s: &str) -> Result<Backend> {
        match s.to_ascii_lowercase().as_str() {
            "ipvs" => Ok(Backend::Ipvs),
            "nftables" | "nft" => Ok(Backend::Nftables),
            _ => Err(Error::UnknownLbBackend {
                input: s.to_owned(),
            }),
        }
    }
}

/// IPVS when the kernel has it (its generic-netlink family resolves, if need be after
/// `modprobe ip_vs`), else nftables. Generic-netlink families are global, so the answer holds
/// for every namespace.
pub fn detect() -> Backend {
    if ipvs::available() {
        return Backend::Ipvs;
    }
    match std::process::Command::new("modprobe")
        .arg("ip_vs")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(status) if status.success() && ipvs::available() => Backend::Ipvs,
        _ => {
            tracing::info!("no ipvs in this kernel: load balancing with nftables");
            Backend::Nftables
        }
    }
}

/// The nftables-safe suffix naming a VIP's objects: `10_0_0_5` for 10.0.0.5.
pub(crate) fn vip_suffix(vip: Ipv4Addr) -> String {
    let [a, b, c, d] = vip.octets();
    format!("{a}_{b}_{c}_{d}")
}

/// The VIP named by a suffix made by [`vip_suffix`].
pub(crate) fn parse_vip_suffix(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('_');
    for o in &mut octets {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn svc(vip: &str, backends: &[&str]) -> LbService {
        LbService::new(ip(vip), backends.iter().map(|b| ip(b)))
    }

    #[test]
    fn plan_of_converged_table_is_empty() {
        let t: LbTable = [
            svc("10.0.0.5", &["10.0.0.10", "10.0.0.11"]),
            svc("10.0.0.6", &[]),
        ]
        .into_iter()
        .collect();
        assert_eq!(plan(&t, &t.clone()), vec![]);
    }

    #[test]
    fn plan_upserts_missing_and_changed_and_removes_stale() {
        let desired: LbTable = [
            svc("10.0.0.5", &["10.0.0.10"]),
            svc("10.0.0.6", &["10.0.0.20", "10.0.0.21"]),
            svc("10.0.0.8", &[]),
        ]
        .into_iter()
        .collect();
        let observed: LbTable = [
            svc("10.0.0.5", &["10.0.0.10"]),
            svc("10.0.0.6", &["10.0.0.20"]),
            svc("10.0.0.7", &["10.0.0.30"]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            plan(&desired, &observed),
            vec![
                LbChange::Upsert(svc("10.0.0.6", &["10.0.0.20", "10.0.0.21"])),
                LbChange::Remove(ip("10.0.0.7")),
                LbChange::Upsert(svc("10.0.0.8", &[])),
            ]
        );
    }

    #[test]
    fn plan_rewrites_a_broken_service() {
        let desired: LbTable = [svc("10.0.0.5", &["10.0.0.10"])].into_iter().collect();
        let observed: LbTable = [svc("10.0.0.5", &["10.0.0.10", "0.0.0.0"])]
            .into_iter()
            .collect();
        assert_eq!(
            plan(&desired, &observed),
            vec![LbChange::Upsert(svc("10.0.0.5", &["10.0.0.10"]))]
        );
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!("ipvs".parse::<Backend>().unwrap(), Backend::Ipvs);
        assert_eq!("nftables".parse::<Backend>().unwrap(), Backend::Nftables);
        assert_eq!("NFT".parse::<Backend>().unwrap(), Backend::Nftables);
        let err = "iptables".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("\"iptables\""), "{err}");
    }

    #[test]
    fn vip_suffix_round_trips() {
        assert_eq!(vip_suffix(ip("10.0.255.5")), "10_0_255_5");
        assert_eq!(parse_vip_suffix("10_0_255_5"), Some(ip("10.0.255.5")));
        assert_eq!(parse_vip_suffix("10_0_255"), None);
        assert_eq!(parse_vip_suffix("10_0_255_5_1"), None);
        assert_eq!(parse_vip_suffix("10_0_256_5"), None);
    }
}
