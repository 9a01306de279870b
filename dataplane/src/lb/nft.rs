//! The nftables load balancer ([`NftLb`]) and the nftables side of the IPVS one.
//!
//! # Objects (all in `table ip mesh_lb` of the namespace; no other table is read or changed)
//! | object | what |
//! |---|---|
//! | `map services { type ipv4_addr : verdict }` | VIP -> `goto svc_<vip>`: one hash lookup whatever the number of services |
//! | `chain output` (nat, hook output, priority -100) | `ip daddr vmap @services`: connections opened in the namespace |
//! | `chain prerouting` (nat, hook prerouting, priority -100) | the same for connections entering it (the ingress sandbox) |
//! | `map be_<vip> { typeof numgen inc mod N : ip daddr }` | slot `0..N` -> backend IP, backends in address order |
//! | `chain svc_<vip>` | `dnat to numgen inc mod N map @be_<vip>` (round robin); with no backends `reject with tcp reset` for TCP and `reject` (ICMP port unreachable) for the rest |
//! | `set empty { type ipv4_addr }`, `chain reject_output` (filter, hook output, priority 0) | VIPs without backends, rejected again in a filter chain (see below) |
//!
//! Why the second reject: in the output path, a reject in a nat chain answers TCP with a reset
//! (the client sees "connection refused" at once) but the ICMP error for UDP never reaches the
//! local socket, so a UDP client would wait for its timeout. Rejected in a filter chain, the
//! datagram's `send` fails at once with `EPERM` (and TCP's `connect` with "connection
//! refused"). The nat chain's reject still serves packets that come in through prerouting
//! (the ingress sandbox).
//!
//! `<vip>` is the VIP with `_` for dots (`svc_10_0_0_5`). The rule of a service chain carries
//! the comment `mesh-lb dnat N` or `mesh-lb reject`, which observation checks against the map.
//!
//! With IPVS ([`super::IpvsLb`]) the same table holds `services` and one chain per VIP, but
//! the base chain is `mark_output` (type route, hook output, priority mangle) and a service
//! chain sets `meta mark set <vip as u32>` (comment `mesh-lb mark`), which IPVS's fwmark
//! service picks up; or rejects, as above.
//!
//! # Transactions
//! [`NftLb::apply`] sends all its changes as one `nft -f` transaction, and a change to one
//! service is a fixed handful of statements naming only that service (plus the few that make
//! sure the table and its base chains exist). The map and the `numgen` modulus of a service
//! are replaced together (flush map, flush chain, add elements, add rule), so a backend
//! removal never leaves a slot that points nowhere. Removal is idempotent: the script first
//! adds the service's objects (adding an existing object is a no-op) and then deletes them.
//!
//! # Timeouts
//! DNAT'ed flows live in conntrack with its usual timeouts: 5 days for an idle established
//! TCP connection, so idle connections through a VIP are not cut at 900 s as IPVS does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;

use super::{BROKEN, LbChange, LbService, LbTable, LoadBalancer, TABLE, conntrack, vip_suffix};
use crate::error::{Error, Result};
use crate::netns::Netns;
pub(crate) use crate::nft::run_script;

const COMMENT_DNAT: &str = "mesh-lb dnat";
const COMMENT_REJECT: &str = "mesh-lb reject";
const COMMENT_MARK: &str = "mesh-lb mark";

/// What a service chain does with a VIP that has backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// DNAT to one backend (the nftables backend).
    Dnat,
    /// Set the fwmark of the VIP for IPVS (the IPVS backend).
    Mark,
}

/// The fwmark the IPVS flavour gives a VIP's packets: the VIP as a number, unique per VIP and
/// never 0.
pub(crate) fn fwmark_of(vip: Ipv4Addr) -> u32 {
    u32::from(vip)
}

/// Load balancing with nftables DNAT: see the module doc.
#[derive(Clone, Debug, Default)]
pub struct NftLb {}

impl NftLb {
    pub fn new() -> NftLb {
        NftLb {}
    }

    /// The `nft -f` script [`NftLb::apply`] sends for `changes` (one transaction).
    pub fn script(changes: &[LbChange]) -> String {
        script(Flavor::Dnat, changes)
    }
}

impl LoadBalancer for NftLb {
    fn observe(&self, netns: &str) -> Result<LbTable> {
        let Some(state) = observe_table(&Netns::open(netns)?)? else {
            return Ok(LbTable::new());
        };
        Ok(state.table(Flavor::Dnat, |_| None))
    }

    fn apply(&self, netns: &str, changes: &[LbChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        tracing::debug!(netns, changes = changes.len(), "apply nftables lb");
        apply_flavor(&Netns::open(netns)?, Flavor::Dnat, changes)
    }

    fn flush_conntrack(&self, netns: &str, backends: &BTreeSet<Ipv4Addr>) -> Result<()> {
        conntrack::flush_backends(&Netns::open(netns)?, backends).map(|_| ())
    }

    fn clear(&self, netns: &str) -> Result<()> {
        remove_table(&Netns::open(netns)?)
    }
}

/// The statements that make sure our table, its `services` map and `empty` set, and the
/// flavour's base chains exist, with their rules. Constant size: the base chains are flushed
/// and their rules re-added inside the same transaction, which keeps it idempotent without a
/// lookup.
fn base(flavor: Flavor, out: &mut Vec<String>) {
    let t = TABLE;
    out.push(format!("add table ip {t}"));
    out.push(format!(
        "add map ip {t} services {{ type ipv4_addr : verdict; }}"
    ));
    out.push(format!("add set ip {t} empty {{ type ipv4_addr; }}"));
    const DNAT: &[(&str, &str)] = &[
        ("output", "type nat hook output priority -100;"),
        ("prerouting", "type nat hook prerouting priority -100;"),
    ];
    const MARK: &[(&str, &str)] = &[("mark_output", "type route hook output priority mangle;")];
    let (chains, other) = match flavor {
        Flavor::Dnat => (DNAT, MARK),
        Flavor::Mark => (MARK, DNAT),
    };
    // The other flavour's base chains go (the backend changed since the table was written):
    // a route chain dispatching to service chains that DNAT is refused by the kernel.
    for (name, spec) in other {
        out.push(format!(
            "add chain ip {t} {name} {{ {spec} policy accept; }}"
        ));
        out.push(format!("flush chain ip {t} {name}"));
        out.push(format!("delete chain ip {t} {name}"));
    }
    for (name, spec) in chains {
        out.push(format!(
            "add chain ip {t} {name} {{ {spec} policy accept; }}"
        ));
        out.push(format!("flush chain ip {t} {name}"));
        out.push(format!("add rule ip {t} {name} ip daddr vmap @services"));
    }
    let name = "reject_output";
    out.push(format!(
        "add chain ip {t} {name} {{ type filter hook output priority 0; policy accept; }}"
    ));
    out.push(format!("flush chain ip {t} {name}"));
    out.push(format!(
        "add rule ip {t} {name} ip daddr @empty meta l4proto tcp reject with tcp reset"
    ));
    out.push(format!("add rule ip {t} {name} ip daddr @empty reject"));
}

/// The whole script for `changes`.
pub(crate) fn script(flavor: Flavor, changes: &[LbChange]) -> String {
    let mut out = Vec::new();
    base(flavor, &mut out);
    for change in changes {
        match change {
            LbChange::Upsert(s) => upsert(flavor, s, &mut out),
            LbChange::Remove(vip) => remove(*vip, &mut out),
        }
    }
    out.push(String::new());
    out.join("\n")
}

/// Statements that (re)write one service: its map, its chain, its dispatch element and its
/// membership of `empty`.
fn upsert(flavor: Flavor, s: &LbService, out: &mut Vec<String>) {
    let t = TABLE;
    let vip = s.vip;
    let v = vip_suffix(vip);
    let n = s.backends.len();
    out.push(format!(
        "add map ip {t} be_{v} {{ typeof numgen inc mod {} : ip daddr; }}",
        n.max(1)
    ));
    out.push(format!("add chain ip {t} svc_{v}"));
    out.push(format!("flush map ip {t} be_{v}"));
    out.push(format!("flush chain ip {t} svc_{v}"));
    out.push(format!("add element ip {t} empty {{ {vip} }}"));
    if n == 0 {
        out.push(format!(
            "add rule ip {t} svc_{v} meta l4proto tcp reject with tcp reset comment \"{COMMENT_REJECT}\""
        ));
        out.push(format!(
            "add rule ip {t} svc_{v} reject comment \"{COMMENT_REJECT}\""
        ));
    } else {
        out.push(format!("delete element ip {t} empty {{ {vip} }}"));
        match flavor {
            Flavor::Dnat => {
                let elements: Vec<String> = s
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, ip)| format!("{i} : {ip}"))
                    .collect();
                out.push(format!(
                    "add element ip {t} be_{v} {{ {} }}",
                    elements.join(", ")
                ));
                out.push(format!(
                    "add rule ip {t} svc_{v} dnat to numgen inc mod {n} map @be_{v} comment \"{COMMENT_DNAT} {n}\""
                ));
            }
            Flavor::Mark => out.push(format!(
                "add rule ip {t} svc_{v} meta mark set {:#010x} comment \"{COMMENT_MARK}\"",
                fwmark_of(vip)
            )),
        }
    }
    out.push(format!(
        "add element ip {t} services {{ {vip} : goto svc_{v} }}"
    ));
}

/// Statements that delete one service, present or not.
fn remove(vip: Ipv4Addr, out: &mut Vec<String>) {
    let t = TABLE;
    let v = vip_suffix(vip);
    out.push(format!(
        "add map ip {t} be_{v} {{ typeof numgen inc mod 1 : ip daddr; }}"
    ));
    out.push(format!("add chain ip {t} svc_{v}"));
    out.push(format!(
        "add element ip {t} services {{ {vip} : goto svc_{v} }}"
    ));
    out.push(format!("delete element ip {t} services {{ {vip} }}"));
    out.push(format!("add element ip {t} empty {{ {vip} }}"));
    out.push(format!("delete element ip {t} empty {{ {vip} }}"));
    out.push(format!("flush chain ip {t} svc_{v}"));
    out.push(format!("delete chain ip {t} svc_{v}"));
    out.push(format!("delete map ip {t} be_{v}"));
}

/// What a service chain's rules were found to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChainRule {
    /// `mesh-lb dnat N`.
    Dnat(usize),
    /// `mesh-lb reject` (both rules).
    Reject,
    /// `mesh-lb mark`.
    Mark,
    /// Anything else, or nothing.
    Other,
}

/// One VIP's objects in our table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NftService {
    /// `services` holds `VIP : goto svc_<vip>`.
    pub dispatched: bool,
    /// The `svc_<vip>` chain, if present, and what its rules do.
    pub rule: Option<ChainRule>,
    /// The `be_<vip>` map, if present: slot -> backend.
    pub slots: Option<BTreeMap<u64, Ipv4Addr>>,
    /// The set `empty` holds the VIP.
    pub rejected: bool,
}

/// Our table as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NftState {
    pub services: BTreeMap<Ipv4Addr, NftService>,
}

impl NftState {
    /// The services of the table for `flavor`. `ipvs_backends(vip)` gives the destinations
    /// of the VIP's IPVS service (mark flavour).
    pub fn table(
        &self,
        flavor: Flavor,
        ipvs_backends: impl Fn(Ipv4Addr) -> Option<BTreeSet<Ipv4Addr>>,
    ) -> LbTable {
        let mut table = LbTable::new();
        for (vip, s) in &self.services {
            let (mut backends, ok) = match (&s.rule, flavor) {
                (Some(ChainRule::Reject), _) => (
                    BTreeSet::new(),
                    s.rejected && s.slots.as_ref().is_some_and(|m| m.is_empty()),
                ),
                (Some(ChainRule::Dnat(n)), Flavor::Dnat) => {
                    let slots = s.slots.clone().unwrap_or_default();
                    let ok = slots.len() == *n
                        && slots.keys().copied().eq(0..*n as u64)
                        && s.slots.is_some();
                    let backends: BTreeSet<_> = slots.into_values().collect();
                    let ok = ok && backends.len() == *n;
                    (backends, ok)
                }
                (Some(ChainRule::Mark), Flavor::Mark) => match ipvs_backends(*vip) {
                    Some(b) => (b, s.slots.is_some()),
                    None => (BTreeSet::new(), false),
                },
                _ => (BTreeSet::new(), false),
            };
            let rejecting = matches!(s.rule, Some(ChainRule::Reject));
            if !(ok && s.dispatched) || (s.rejected && !rejecting) {
                backends.insert(BROKEN);
            }
            table.upsert(LbService {
                vip: *vip,
                backends,
            });
        }
        table
    }
}

/// Reads our table in `netns`; `None` if it does not exist.
pub(crate) fn observe_table(netns: &Netns) -> Result<Option<NftState>> {
    let Some(json) = crate::nft::list_table(netns, TABLE, true)? else {
        return Ok(None);
    };
    parse_listing(&json)
        .map(Some)
        .map_err(|reason| Error::LbObserve {
            netns: netns.name().to_owned(),
            reason,
        })
}

/// Parses `nft -j list table ip mesh_lb`.
pub(crate) fn parse_listing(json: &[u8]) -> std::result::Result<NftState, String> {
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("invalid json: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut state = NftState::default();
    // Rules per service chain, in order, to judge them once all are seen.
    let mut rules: BTreeMap<Ipv4Addr, Vec<Option<String>>> = BTreeMap::new();
    for item in items {
        if let Some(set) = item.get("set") {
            if set.get("name").and_then(Value::as_str) == Some("empty") {
                let elems = set.get("elem").and_then(Value::as_array);
                for vip in elems.into_iter().flatten().filter_map(Value::as_str) {
                    if let Ok(vip) = vip.parse::<Ipv4Addr>() {
                        state.services.entry(vip).or_default().rejected = true;
                    }
                }
            }
        } else if let Some(map) = item.get("map") {
            let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
            let elems = map.get("elem").and_then(Value::as_array);
            if name == "services" {
                for e in elems.into_iter().flatten() {
                    let Some(pair) = e.as_array().filter(|p| p.len() == 2) else {
                        continue;
                    };
                    let (Some(vip), Some(target)) = (
                        pair[0].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()),
                        pair[1].pointer("/goto/target").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    let entry = state.services.entry(vip).or_default();
                    entry.dispatched = target == format!("svc_{}", vip_suffix(vip));
                }
            } else if let Some(vip) = name.strip_prefix("be_").and_then(super::parse_vip_suffix) {
                let mut slots = BTreeMap::new();
                for e in elems.into_iter().flatten() {
                    let pair = e
                        .as_array()
                        .filter(|p| p.len() == 2)
                        .ok_or_else(|| format!("map {name}: element {e} is not a pair"))?;
                    let slot = pair[0]
                        .as_u64()
                        .ok_or_else(|| format!("map {name}: key {} is not a number", pair[0]))?;
                    let ip = pair[1]
                        .as_str()
                        .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        .ok_or_else(|| format!("map {name}: value {} is not ipv4", pair[1]))?;
                    slots.insert(slot, ip);
                }
                state.services.entry(vip).or_default().slots = Some(slots);
            }
        } else if let Some(chain) = item.get("chain") {
            let name = chain
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Some(vip) = name.strip_prefix("svc_").and_then(super::parse_vip_suffix) {
                rules.entry(vip).or_default();
                state.services.entry(vip).or_default();
            }
        } else if let Some(rule) = item.get("rule") {
            let chain = rule
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Some(vip) = chain.strip_prefix("svc_").and_then(super::parse_vip_suffix) {
                let comment = rule
                    .get("comment")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                rules.entry(vip).or_default().push(comment);
            }
        }
    }
    for (vip, comments) in rules {
        let rule = match comments.as_slice() {
            [Some(a), Some(b)] if a == COMMENT_REJECT && b == COMMENT_REJECT => ChainRule::Reject,
            [Some(c)] if c == COMMENT_MARK => ChainRule::Mark,
            [Some(c)] => c
                .strip_prefix(COMMENT_DNAT)
                .and_then(|n| n.trim().parse().ok())
                .map_or(ChainRule::Other, ChainRule::Dnat),
            _ => ChainRule::Other,
        };
        state.services.entry(vip).or_default().rule = Some(rule);
    }
    Ok(state)
}

/// Deletes our table in `netns`; absent is success.
/// Runs the script of `changes` in `flavor`. If it fails and the table holds the other
/// flavour's base chains (the load-balancing backend changed since it was written; some
/// kernels refuse to take the table over in one transaction), the table goes and the error is
/// returned: the caller's next attempt observes an empty table and writes it whole.
pub(crate) fn apply_flavor(netns: &Netns, flavor: Flavor, changes: &[LbChange]) -> Result<()> {
    let result = run_script(netns, &script(flavor, changes));
    if result.is_err() {
        let foreign = match flavor {
            Flavor::Dnat => "mark_output",
            Flavor::Mark => "prerouting",
        };
        let mut list = std::process::Command::new("nft");
        list.args(["list", "chain", "ip", TABLE, foreign])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let held =
            netns.enter_on_exec(&mut list).is_ok() && list.status().is_ok_and(|s| s.success());
        if held {
            tracing::warn!(
                netns = netns.name(),
                "load-balancer table of another backend: removing it"
            );
            remove_table(netns)?;
        }
    }
    result
}

pub(crate) fn remove_table(netns: &Netns) -> Result<()> {
    run_script(
        netns,
        &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn upsert_replaces_map_and_modulus_in_one_script() {
        let s = LbService::new(ip("10.0.0.5"), [ip("10.0.0.12"), ip("10.0.0.11")]);
        let script = NftLb::script(&[LbChange::Upsert(s)]);
        let body: Vec<&str> = script
            .lines()
            .skip_while(|l| !l.contains("be_10_0_0_5"))
            .collect();
        assert_eq!(
            body,
            [
                "add map ip mesh_lb be_10_0_0_5 { typeof numgen inc mod 2 : ip daddr; }",
                "add chain ip mesh_lb svc_10_0_0_5",
                "flush map ip mesh_lb be_10_0_0_5",
                "flush chain ip mesh_lb svc_10_0_0_5",
                "add element ip mesh_lb empty { 10.0.0.5 }",
                "delete element ip mesh_lb empty { 10.0.0.5 }",
                "add element ip mesh_lb be_10_0_0_5 { 0 : 10.0.0.11, 1 : 10.0.0.12 }",
                "add rule ip mesh_lb svc_10_0_0_5 dnat to numgen inc mod 2 map @be_10_0_0_5 comment \"mesh-lb dnat 2\"",
                "add element ip mesh_lb services { 10.0.0.5 : goto svc_10_0_0_5 }",
            ]
        );
    }

    #[test]
    fn zero_backends_reject_and_ipvs_marks() {
        let none = NftLb::script(&[LbChange::Upsert(LbService::new(ip("10.0.0.5"), []))]);
        assert!(none.contains("svc_10_0_0_5 meta l4proto tcp reject with tcp reset"));
        assert!(none.contains("svc_10_0_0_5 reject comment"));
        assert!(!none.contains("dnat"));
        let mark = script(
            Flavor::Mark,
            &[LbChange::Upsert(LbService::new(
                ip("10.0.0.5"),
                [ip("10.0.0.9")],
            ))],
        );
        assert!(mark.contains("svc_10_0_0_5 meta mark set 0x0a000005 comment \"mesh-lb mark\""));
        assert!(mark.contains("type route hook output priority mangle"));
        assert!(!mark.contains("add element ip mesh_lb be_"));
    }

    /// Needs root. A table written by the IPVS backend (its route chain marks for IPVS) is
    /// taken over by nftables' DNAT when the backend changes: the route chain goes, else the
    /// kernel refuses DNAT service chains reachable from it.
    #[test]
    fn a_table_written_for_ipvs_is_taken_over_by_dnat() {
        let ns = crate::netns::TempNetns::new("flavor").unwrap();
        let service = LbService::new(ip("10.0.0.5"), [ip("10.0.0.9")]);
        let marks = script(Flavor::Mark, &[LbChange::Upsert(service.clone())]);
        crate::nft::run_script(&ns, &marks).unwrap();
        NftLb::new()
            .apply(ns.name(), &[LbChange::Upsert(service.clone())])
            .expect("dnat over a table written for ipvs");
        assert_eq!(
            NftLb::new().observe(ns.name()).unwrap(),
            [service].into_iter().collect::<LbTable>()
        );
        let listing = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "nft",
                "list",
                "table",
                "ip",
                TABLE,
            ])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(!listing.contains("mark_output"), "{listing}");
    }

    #[test]
    fn removal_adds_before_deleting_so_absent_is_fine() {
        let s = NftLb::script(&[LbChange::Remove(ip("10.0.0.5"))]);
        let add = s.find("add chain ip mesh_lb svc_10_0_0_5").unwrap();
        let del = s.find("delete chain ip mesh_lb svc_10_0_0_5").unwrap();
        assert!(add < del);
        assert!(s.contains("delete map ip mesh_lb be_10_0_0_5"));
    }

    /// What nft 1.0.6 prints for a table with one balanced, one rejecting and one broken
    /// service.
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "mesh_lb", "handle": 1}}, {"map": {"family": "ip", "name": "services", "table": "mesh_lb", "type": "ipv4_addr", "handle": 1, "map": "verdict", "elem": [["10.9.0.100", {"goto": {"target": "svc_10_9_0_100"}}], ["10.9.0.101", {"goto": {"target": "svc_10_9_0_101"}}], ["10.9.0.102", {"goto": {"target": "svc_10_9_0_102"}}]]}}, {"set": {"family": "ip", "name": "empty", "table": "mesh_lb", "type": "ipv4_addr", "handle": 3, "elem": ["10.9.0.101"]}}, {"map": {"family": "ip", "name": "be_10_9_0_101", "table": "mesh_lb", "type": "integer", "handle": 7, "map": "ipv4_addr"}}, {"map": {"family": "ip", "name": "be_10_9_0_100", "table": "mesh_lb", "type": "integer", "handle": 18, "map": "ipv4_addr", "elem": [[0, "10.9.0.2"], [1, "10.9.0.3"]]}}, {"map": {"family": "ip", "name": "be_10_9_0_102", "table": "mesh_lb", "type": "integer", "handle": 30, "map": "ipv4_addr", "elem": [[0, "10.9.0.2"]]}}, {"chain": {"family": "ip", "table": "mesh_lb", "name": "output", "handle": 2, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "mesh_lb", "name": "svc_10_9_0_101", "handle": 8}}, {"chain": {"family": "ip", "table": "mesh_lb", "name": "svc_10_9_0_100", "handle": 19}}, {"chain": {"family": "ip", "table": "mesh_lb", "name": "svc_10_9_0_102", "handle": 31}}, {"rule": {"family": "ip", "table": "mesh_lb", "chain": "output", "handle": 17, "expr": [{"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@services"}}]}}, {"rule": {"family": "ip", "table": "mesh_lb", "chain": "svc_10_9_0_101", "handle": 25, "comment": "mesh-lb reject", "expr": [{"reject": {"type": "tcp reset"}}]}}, {"rule": {"family": "ip", "table": "mesh_lb", "chain": "svc_10_9_0_101", "handle": 26, "comment": "mesh-lb reject", "expr": [{"reject": {"type": "icmp", "expr": "port-unreachable"}}]}}, {"rule": {"family": "ip", "table": "mesh_lb", "chain": "svc_10_9_0_100", "handle": 20, "comment": "mesh-lb dnat 2", "expr": [{"dnat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, "data": "@be_10_9_0_100"}}}}]}}, {"rule": {"family": "ip", "table": "mesh_lb", "chain": "svc_10_9_0_102", "handle": 32, "comment": "mesh-lb dnat 2", "expr": []}}]}"#;

    #[test]
    fn listing_is_read_back_and_inconsistency_is_flagged() {
        let state = parse_listing(LISTING.as_bytes()).unwrap();
        let table = state.table(Flavor::Dnat, |_| None);
        assert_eq!(
            table.get(ip("10.9.0.100")).unwrap().backends,
            [ip("10.9.0.2"), ip("10.9.0.3")].into()
        );
        assert!(table.get(ip("10.9.0.101")).unwrap().backends.is_empty());
        // Modulus 2 over a one-slot map: a slot points nowhere.
        assert!(
            table
                .get(ip("10.9.0.102"))
                .unwrap()
                .backends
                .contains(&BROKEN)
        );
        assert_eq!(table.len(), 3);
    }
}
