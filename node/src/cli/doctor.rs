//! `mesh doctor`: checks this host for what mesh needs and prints one line per check (`ok`,
//! `warn` or `problem`, its name, what was found) and, under a warning or a problem, one line
//! saying how to fix it. Exits 1 when any check found a problem.
//!
//! Each check is a pure function from what was read to a [`Check`], so its rules are tested
//! with made-up readings; [`gather`] does the reading (files under /proc and /sys, `nft`,
//! sockets bound and dropped at once, the local daemon's API) and nothing else. Nothing on the
//! host is changed.
//!
//! The clock is compared with the leader's (its time in `GetClusterInfo`, against the middle
//! of the call here) when the daemon runs in a cluster.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;
use mesh_proto::local_client::LocalClient;
use mesh_proto::{InfoRequest, NodeRole};
use serde_json::{Value, json};

use super::client;
use super::format::{self, Format, RowKind};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Output format: `table` (a line per check, a fix under each warning or problem),
    /// `json`, or a Go template over the fields Status, Check, Detail and Fix.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: String,
    /// The state dir of this host's daemon, where its certificate is.
    #[arg(long, default_value = "/var/lib/mesh")]
    pub state_dir: PathBuf,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    /// Works, degraded or with a surprise the operator should know of.
    Warn,
    /// mesh cannot work as it should until this is fixed.
    Problem,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Problem => "problem",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it: one line, under warnings and problems.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn problem(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Problem,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

// ---- the checks: pure functions of what was read ----

/// What the kernel says of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Module {
    /// In `/sys/module`.
    Loaded,
    /// Listed in `modules.builtin`.
    Builtin,
    /// Listed in `modules.dep`: loaded on first use.
    Available,
    /// In none of them, and the module lists were readable.
    Missing,
    /// Not loaded, and the module lists of this kernel cannot be read.
    Unknown,
}

pub fn check_vxlan(m: &Module) -> Check {
    const NAME: &str = "vxlan";
    match m {
        Module::Loaded => Check::ok(NAME, "module loaded"),
        Module::Builtin => Check::ok(NAME, "built into the kernel"),
        Module::Available => Check::ok(
            NAME,
            "module available, loaded when the first overlay is made",
        ),
        Module::Missing => Check::problem(
            NAME,
            "this kernel has no vxlan module: overlay networks cannot be made",
            "install the kernel's extra modules (linux-modules-extra-$(uname -r) on Ubuntu) or a kernel with CONFIG_VXLAN",
        ),
        Module::Unknown => Check::warn(
            NAME,
            "not loaded, and this kernel's module lists cannot be read",
            "run `modprobe vxlan`; overlay networks need it",
        ),
    }
}

/// Whether `nft list tables` worked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nft {
    Works,
    NotInstalled,
    /// It ran and failed: its first line of error.
    Fails(String),
}

pub fn check_nftables(nft: &Nft, root: bool) -> Check {
    const NAME: &str = "nftables";
    match nft {
        Nft::Works => Check::ok(NAME, "`nft list tables` works"),
        Nft::NotInstalled => Check::problem(
            NAME,
            "no `nft` command: mesh programs load balancers, the routing mesh and NAT with it",
            "install nftables (apt install nftables)",
        ),
        Nft::Fails(why) if !root => Check::warn(
            NAME,
            format!("`nft list tables` failed: {why}"),
            "run `mesh doctor` as root",
        ),
        Nft::Fails(why) => Check::problem(
            NAME,
            format!("`nft list tables` failed: {why}"),
            "load nf_tables (modprobe nf_tables) or use a kernel with CONFIG_NF_TABLES",
        ),
    }
}

pub fn check_conntrack(kernel: bool, tool: bool) -> Check {
    const NAME: &str = "conntrack";
    match (kernel, tool) {
        (false, _) => Check::problem(
            NAME,
            "no connection tracking in this kernel (/proc/sys/net/netfilter): NAT and load balancing need it",
            "load nf_conntrack (modprobe nf_conntrack)",
        ),
        (true, false) => Check::warn(
            NAME,
            "kernel tracking on, but no `conntrack` command: flows to removed backends are not flushed, so a UDP client may keep sending to a task that is gone",
            "install conntrack (apt install conntrack)",
        ),
        (true, true) => Check::ok(NAME, "kernel tracking on, `conntrack` installed"),
    }
}

pub fn check_ipvs(proc_ip_vs: bool, m: &Module) -> Check {
    const NAME: &str = "ipvs";
    match (proc_ip_vs, m) {
        (true, _) | (_, Module::Loaded | Module::Builtin) => {
            Check::ok(NAME, "available: the IPVS load balancer is used")
        }
        (false, Module::Available) => Check::ok(
            NAME,
            "module available: the daemon loads it and uses the IPVS load balancer",
        ),
        (false, _) => Check::warn(
            NAME,
            "not in this kernel (no /proc/net/ip_vs): nftables load balancer will be used",
            "nothing to do, or load ip_vs (modprobe ip_vs) to balance with IPVS",
        ),
    }
}

pub fn check_wireguard(m: &Module) -> Check {
    const NAME: &str = "wireguard";
    match m {
        Module::Loaded | Module::Builtin | Module::Available => {
            Check::ok(NAME, "kernel WireGuard available")
        }
        Module::Missing | Module::Unknown => Check::warn(
            NAME,
            "no kernel WireGuard (/sys/module/wireguard): encrypted overlays (not in this version yet) would use userspace tunnels",
            "load wireguard (modprobe wireguard) if this kernel has it",
        ),
    }
}

pub fn check_tun(dev_net_tun: bool) -> Check {
    const NAME: &str = "tun";
    if dev_net_tun {
        Check::ok(NAME, "/dev/net/tun present")
    } else {
        Check::warn(
            NAME,
            "no /dev/net/tun: userspace tunnels cannot be made",
            "load tun (modprobe tun); in a container, pass /dev/net/tun in",
        )
    }
}

/// A port mesh listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    pub udp: bool,
    pub what: &'static str,
}

/// The ports of a node with mesh's defaults.
pub const PORTS: [Port; 4] = [
    Port {
        port: 2377,
        udp: false,
        what: "control API and raft",
    },
    Port {
        port: 7946,
        udp: false,
        what: "gossip sync",
    },
    Port {
        port: 7946,
        udp: true,
        what: "gossip",
    },
    Port {
        port: 4789,
        udp: true,
        what: "VXLAN data path",
    },
];

/// What binding a port on 0.0.0.0 said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    Free,
    InUse,
    /// Another error (permission...).
    Failed(String),
}

pub fn check_port(p: Port, bind: &Bind, daemon_running: bool) -> Check {
    let proto = if p.udp { "udp" } else { "tcp" };
    let name = format!("port {}/{proto}", p.port);
    match bind {
        Bind::Free => Check::ok(name, format!("free ({})", p.what)),
        // Which process holds it is not looked up: while the daemon runs, it is the likely
        // holder.
        Bind::InUse if daemon_running => Check::ok(
            name,
            format!(
                "in use while the mesh daemon runs: taken to be the mesh daemon's ({})",
                p.what
            ),
        ),
        Bind::InUse => {
            let fix = if p.port == 4789 {
                "find the holder (`ip -d link show type vxlan`: Docker Swarm's overlays use 4789 too) and stop it, or init the cluster with --data-path-port".to_string()
            } else {
                let flag = if p.udp { "-lunp" } else { "-ltnp" };
                format!(
                    "find the holder (`ss {flag} 'sport = :{}'`; Docker Swarm uses this port too) and stop it",
                    p.port
                )
            };
            Check::problem(
                name,
                format!(
                    "in use by another program, and no mesh daemon answers ({})",
                    p.what
                ),
                fix,
            )
        }
        Bind::Failed(why) => Check::warn(
            name,
            format!("cannot tell: binding it failed: {why}"),
            "run `mesh doctor` as root",
        ),
    }
}

/// `net.ipv4.ip_forward` as read (`None`: unreadable).
pub fn check_ip_forward(value: Option<&str>) -> Check {
    const NAME: &str = "ip_forward";
    match value.map(str::trim) {
        Some("1") => Check::ok(NAME, "net.ipv4.ip_forward = 1"),
        Some(v) => Check::warn(
            NAME,
            format!(
                "net.ipv4.ip_forward = {v}: mesh sets it to 1 when it makes its gateway bridge, which turns on forwarding for the whole host"
            ),
            "decide it yourself: net.ipv4.ip_forward = 1 in /etc/sysctl.d/",
        ),
        None => Check::warn(
            NAME,
            "cannot read /proc/sys/net/ipv4/ip_forward",
            "check that /proc is mounted",
        ),
    }
}

/// `rp_filter` of `all` and `default` as read. The kernel uses the larger of `all` and the
/// interface's own value; network namespaces mesh makes start from the host's values.
pub fn check_rp_filter(all: Option<u8>, default: Option<u8>) -> Check {
    const NAME: &str = "rp_filter";
    let strict: Vec<&str> = [("all", all), ("default", default)]
        .iter()
        .filter(|(_, v)| *v == Some(1))
        .map(|(k, _)| *k)
        .collect();
    match (all, default) {
        (None, _) | (_, None) => Check::warn(
            NAME,
            "cannot read net.ipv4.conf.{all,default}.rp_filter",
            "check that /proc is mounted",
        ),
        _ if !strict.is_empty() => Check::warn(
            NAME,
            format!(
                "strict (1) on {}: replies that come back another way than they left (routing-mesh and overlay paths) are dropped where mesh does not loosen it",
                strict.join(" and ")
            ),
            "use loose mode: net.ipv4.conf.all.rp_filter = 2 and net.ipv4.conf.default.rp_filter = 2 in /etc/sysctl.d/",
        ),
        (Some(a), Some(d)) => Check::ok(NAME, format!("all = {a}, default = {d} (not strict)")),
    }
}

/// The bridge through which tasks and the routing mesh reach the host's forward path.
const GATEWAY_BRIDGE: &str = "mesh_gwbridge";

/// A chain hooked on `forward` whose policy is `drop`, and whether it lets the gateway
/// bridge's traffic through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropChain {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub accepts: Accepts,
    /// It jumps to Docker's `DOCKER-USER`, where Docker wants rules of others to go.
    pub docker_user: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepts {
    /// Rules accept traffic in from and out to the gateway bridge.
    Both,
    /// No rule that could be read accepts both ways.
    No,
    /// A rule that may apply accepts under iptables extensions nft cannot show: cannot tell.
    Unknown,
}

/// The forward chains of an `nft -j list ruleset` document that drop by policy. A rule counts
/// for the gateway bridge when it accepts and matches `iifname` (or `oifname`) against the
/// bridge's name, a wildcard that covers it, or a set holding either, or when it accepts with
/// no condition at all; rules of chains jumped to from the hook chain count too (Docker's
/// `DOCKER-USER`). A rule nft shows only as an iptables extension (`xt`) cannot be read: it
/// makes the answer unknown, unless it is tied to an interface that is not the bridge.
pub fn forward_drop_chains(ruleset: &Value) -> Vec<DropChain> {
    let items = ruleset
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let rules: Vec<&Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    let mut out = Vec::new();
    for chain in items.iter().filter_map(|i| i.get("chain")) {
        if text(chain, "hook") != "forward" || text(chain, "policy") != "drop" {
            continue;
        }
        let (family, table) = (text(chain, "family"), text(chain, "table"));
        let in_table = |r: &&&Value| text(r, "family") == family && text(r, "table") == table;
        // The hook chain and every chain reached from it by jump or goto.
        let mut reached = vec![text(chain, "name")];
        let mut i = 0;
        while i < reached.len() {
            let name = reached[i].clone();
            for rule in rules
                .iter()
                .filter(in_table)
                .filter(|r| text(r, "chain") == name)
            {
                for expr in exprs(rule) {
                    for verdict in ["jump", "goto"] {
                        if let Some(target) = expr.get(verdict).and_then(|v| v.get("target"))
                            && let Some(target) = target.as_str()
                            && !reached.iter().any(|r| r == target)
                        {
                            reached.push(target.to_string());
                        }
                    }
                }
            }
            i += 1;
        }
        let considered: Vec<&Value> = rules
            .iter()
            .filter(in_table)
            .filter(|r| reached.contains(&text(r, "chain")))
            .copied()
            .collect();
        let accepts_dir = |key: &str| considered.iter().any(|r| accepts_bridge(r, key));
        let opaque = considered.iter().any(|r| unreadable_accept(r));
        let accepts = if accepts_dir("iifname") && accepts_dir("oifname") {
            Accepts::Both
        } else if opaque {
            Accepts::Unknown
        } else {
            Accepts::No
        };
        out.push(DropChain {
            family,
            table,
            chain: text(chain, "name"),
            accepts,
            docker_user: reached.iter().any(|c| c == "DOCKER-USER"),
        });
    }
    out
}

fn exprs(rule: &Value) -> &[Value] {
    rule.get("expr")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn verdict_accept(rule: &Value) -> bool {
    exprs(rule).iter().any(|e| e.get("accept").is_some())
}

/// The values a rule requires of `iifname` or `oifname` (`==` or `in` matches).
fn interface_matches<'a>(rule: &'a Value, key: &str) -> Vec<&'a Value> {
    exprs(rule)
        .iter()
        .filter_map(|e| e.get("match"))
        .filter(|m| {
            let on_key = m
                .get("left")
                .and_then(|l| l.get("meta"))
                .and_then(|meta| meta.get("key"))
                .and_then(Value::as_str)
                == Some(key);
            let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
            on_key && matches!(op, "==" | "in")
        })
        .filter_map(|m| m.get("right"))
        .collect()
}

/// Whether `rule` accepts traffic whose `key` (iifname/oifname) is the gateway bridge.
fn accepts_bridge(rule: &Value, key: &str) -> bool {
    let unconditional = exprs(rule)
        .iter()
        .all(|e| e.get("accept").is_some() || e.get("counter").is_some());
    verdict_accept(rule)
        && (unconditional || interface_matches(rule, key).into_iter().any(names_bridge))
}

/// Whether `rule` accepts under conditions nft cannot show, on traffic that may be the
/// bridge's (not tied to another interface).
fn unreadable_accept(rule: &Value) -> bool {
    let opaque = exprs(rule).iter().any(|e| e.get("xt").is_some());
    let elsewhere = ["iifname", "oifname"]
        .iter()
        .flat_map(|key| interface_matches(rule, key))
        .any(|v| !names_bridge(v));
    opaque && verdict_accept(rule) && !elsewhere
}

/// A name, wildcard (`mesh*`) or set of them that covers the gateway bridge.
fn names_bridge(v: &Value) -> bool {
    match v {
        Value::String(s) => match s.strip_suffix('*') {
            Some(prefix) => GATEWAY_BRIDGE.starts_with(prefix),
            None => s == GATEWAY_BRIDGE,
        },
        Value::Object(o) => o
            .get("set")
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().any(names_bridge)),
        _ => false,
    }
}

/// The forward-policy checks: one per chain that drops, or one `ok`. `Err`: the ruleset could
/// not be read.
pub fn check_forward_policy(chains: Result<&[DropChain], &str>) -> Vec<Check> {
    const NAME: &str = "forward policy";
    let chains = match chains {
        Ok(chains) => chains,
        Err(why) => {
            return vec![Check::warn(
                NAME,
                format!("cannot read the ruleset: {why}"),
                "run `mesh doctor` as root with nftables installed",
            )];
        }
    };
    if chains.is_empty() {
        return vec![Check::ok(NAME, "no forward chain drops by policy")];
    }
    chains
        .iter()
        .map(|c| {
            let chain = format!("{} {} {}", c.family, c.table, c.chain);
            let fix = if c.family == "ip" && c.table == "filter" {
                // An iptables table (Docker's): add the rules the way iptables users do.
                format!(
                    "accept traffic of mesh bridges: iptables -I {chain} -i {GATEWAY_BRIDGE} -j ACCEPT; iptables -I {chain} -o {GATEWAY_BRIDGE} -j ACCEPT",
                    chain = if c.docker_user { "DOCKER-USER" } else { &c.chain }
                )
            } else {
                format!(
                    "accept traffic of mesh bridges: nft insert rule {f} {t} {ch} iifname {GATEWAY_BRIDGE} accept; nft insert rule {f} {t} {ch} oifname {GATEWAY_BRIDGE} accept",
                    f = c.family,
                    t = c.table,
                    ch = c.chain
                )
            };
            match c.accepts {
                Accepts::Both => Check::ok(
                    NAME,
                    format!("{chain}: policy drop, but {GATEWAY_BRIDGE} is accepted both ways"),
                ),
                Accepts::No => Check::warn(
                    NAME,
                    format!("{chain}: policy drop, and no rule accepts {GATEWAY_BRIDGE} both ways: unless other rules let it through, task egress and the routing mesh are dropped on this host"),
                    fix,
                ),
                Accepts::Unknown => Check::warn(
                    NAME,
                    format!("{chain}: policy drop; whether {GATEWAY_BRIDGE} is accepted cannot be told (iptables extensions)"),
                    fix,
                ),
            }
        })
        .collect()
}

/// What VXLAN takes of each packet: outer IPv4 (20), UDP (8), VXLAN (8), inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The smallest MTU IPv6 allows, and the least an overlay should offer.
pub const MIN_OVERLAY_MTU: u32 = 1280;

/// The MTU of the default route's interface, as (interface, MTU).
pub fn check_mtu(underlay: Option<(&str, u32)>) -> Check {
    const NAME: &str = "mtu";
    match underlay {
        None => Check::warn(
            NAME,
            "no default route: cannot tell the underlay's MTU",
            "check the MTU of the interface of the address other nodes reach this one on (ip link)",
        ),
        Some((iface, mtu)) if mtu < MIN_OVERLAY_MTU + VXLAN_OVERHEAD => Check::warn(
            NAME,
            format!(
                "{iface} has MTU {mtu}: overlays get {}, below the {MIN_OVERLAY_MTU} IPv6 and many programs expect",
                mtu.saturating_sub(VXLAN_OVERHEAD)
            ),
            format!(
                "raise the underlay MTU to {} or more",
                MIN_OVERLAY_MTU + VXLAN_OVERHEAD
            ),
        ),
        Some((iface, mtu)) => Check::ok(
            NAME,
            format!(
                "{iface} has MTU {mtu}: overlays get {}",
                mtu - VXLAN_OVERHEAD
            ),
        ),
    }
}

/// The ranges mesh takes addresses from on a cluster with the defaults, with what each is.
pub fn mesh_ranges() -> Vec<(Ipv4Net, &'static str, bool)> {
    let parse = |s: &str| s.parse::<Ipv4Net>().expect("a valid constant subnet");
    vec![
        (
            parse(mesh_control::bootstrap::DEFAULT_ADDR_POOL),
            "default address pool",
            false,
        ),
        (
            parse(mesh_common::GATEWAY_BRIDGE_SUBNET),
            "gateway bridge subnet",
            true,
        ),
    ]
}

/// Host routes (with their interface) and resolvers against mesh's ranges: `(range, what,
/// fixed)`, a fixed range being one no flag moves. Routes through the gateway bridge are
/// mesh's own, and the default route overlaps everything: both are left out.
pub fn check_subnets(
    ranges: &[(Ipv4Net, &str, bool)],
    routes: &[(String, Ipv4Net)],
    resolvers: &[Ipv4Addr],
) -> Check {
    const NAME: &str = "subnets";
    let mut fixed_hits = Vec::new();
    let mut pool_hits = Vec::new();
    for (range, what, fixed) in ranges {
        let hits = if *fixed {
            &mut fixed_hits
        } else {
            &mut pool_hits
        };
        for (dev, net) in routes {
            if net.prefix_len() == 0 || dev == GATEWAY_BRIDGE {
                continue;
            }
            if range.contains(net) || net.contains(range) {
                hits.push(format!("route {net} ({dev}) in the {what} {range}"));
            }
        }
        for ip in resolvers.iter().filter(|ip| range.contains(*ip)) {
            hits.push(format!("nameserver {ip} in the {what} {range}"));
        }
    }
    let shown = |hits: &[String]| {
        let mut text = hits.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        if hits.len() > 3 {
            text.push_str(&format!(" and {} more", hits.len() - 3));
        }
        text
    };
    if !fixed_hits.is_empty() {
        return Check::problem(
            NAME,
            format!(
                "{}: the gateway bridge would shadow them",
                shown(&fixed_hits)
            ),
            format!(
                "move that network off {}: mesh's gateway bridge always uses it",
                mesh_common::GATEWAY_BRIDGE_SUBNET
            ),
        );
    }
    if !pool_hits.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "{}: `mesh init` steps around the routes and resolvers of the host it runs on; an overlay given such a subnet hides them from tasks on other hosts",
                shown(&pool_hits)
            ),
            "init the cluster with a --default-addr-pool that avoids them, or give networks --subnet elsewhere",
        );
    }
    let names: Vec<String> = ranges.iter().map(|(r, _, _)| r.to_string()).collect();
    Check::ok(
        NAME,
        format!(
            "no route or resolver of this host in {}",
            names.join(" or ")
        ),
    )
}

/// What the state dir holds of this node's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cert {
    /// No certificate: this host is in no cluster.
    Absent,
    /// Not readable by this user (the state dir is root's).
    Denied,
    Unreadable(String),
    /// Its expiry, in Unix seconds.
    NotAfter(i64),
}

/// Warn this long before a certificate expires.
pub const CERT_WARN_DAYS: i64 = 30;

pub fn check_certificate(cert: &Cert, path: &Path, now: i64) -> Check {
    const NAME: &str = "certificate";
    const DAY: i64 = 86_400;
    let date = |secs: i64| {
        let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        humantime::format_rfc3339_seconds(t).to_string()
    };
    match cert {
        Cert::Absent => Check::ok(
            NAME,
            format!("none at {} (this host is in no cluster)", path.display()),
        ),
        Cert::Denied => Check::warn(
            NAME,
            format!("{}: permission denied", path.display()),
            "run `mesh doctor` as root",
        ),
        Cert::Unreadable(why) => Check::problem(
            NAME,
            format!("{}: {why}", path.display()),
            "restore the state dir from a backup, or leave and join the cluster again",
        ),
        Cert::NotAfter(end) if *end <= now => Check::problem(
            NAME,
            format!("{} expired on {}", path.display(), date(*end)),
            "an expired certificate cannot be renewed: `mesh leave --force`, then join again with a token",
        ),
        Cert::NotAfter(end) if end - now < CERT_WARN_DAYS * DAY => Check::warn(
            NAME,
            format!(
                "expires in {} days ({}); a running daemon renews it before then",
                (end - now) / DAY,
                date(*end)
            ),
            "keep the daemon running and in reach of a manager so it renews in time",
        ),
        Cert::NotAfter(end) => Check::ok(
            NAME,
            format!("valid until {} ({} days)", date(*end), (end - now) / DAY),
        ),
    }
}

/// What the local daemon said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// It answered; the node id is empty when it is in no cluster.
    Running {
        node_id: String,
        manager: bool,
    },
    NotRunning,
    /// The socket is there but the daemon did not answer.
    Silent(String),
}

/// Clock skew this large is reported.
pub const CLOCK_WARN_MS: i64 = 1_000;
/// Clock skew this large is a problem: certificates issued by a manager would not be valid
/// here yet (or any more) around their edges, and timestamps across nodes mislead.
pub const CLOCK_PROBLEM_MS: i64 = 60_000;

/// The clock against the leader's: `skew` is (leader's time - this host's, round trip), or
/// why it could not be read; `None` when there is no cluster to compare with.
pub fn check_clock(skew: Option<Result<(i64, i64), String>>) -> Check {
    const NAME: &str = "clock";
    let fix =
        "synchronise this host's clock (and the managers') with NTP: systemd-timesyncd or chrony";
    match skew {
        None => Check::ok(NAME, "not compared (no cluster)"),
        Some(Err(why)) => Check::warn(
            NAME,
            format!("cannot read the leader's clock: {why}"),
            "check the daemon's connection to the managers (mesh node ls)",
        ),
        Some(Ok((skew, rtt))) => {
            let said = format!(
                "{}{} ms from the leader's (within {} ms)",
                if skew >= 0 { "behind by " } else { "ahead by " },
                skew.abs(),
                rtt / 2 + 1
            );
            // The uncertainty is half the round trip: only skew beyond it counts.
            let sure = skew.abs() - rtt / 2;
            if sure >= CLOCK_PROBLEM_MS {
                Check::problem(NAME, said, fix)
            } else if sure >= CLOCK_WARN_MS {
                Check::warn(NAME, said, fix)
            } else {
                Check::ok(NAME, said)
            }
        }
    }
}

/// This host's clock against the leader's, through the local daemon.
async fn clock_skew(host: &str) -> Result<(i64, i64), String> {
    let ask = async {
        let channel = client::connect(host).await?;
        let before = mesh_common::time::now_ms();
        let info = mesh_proto::control_client::ControlClient::new(channel)
            .get_cluster_info(mesh_proto::GetClusterInfoRequest {})
            .await?
            .into_inner();
        let after = mesh_common::time::now_ms();
        anyhow::Ok((info.leader_time_ms - (before + after) / 2, after - before))
    };
    match tokio::time::timeout(DAEMON_PATIENCE, ask).await {
        Ok(Ok(skew)) => Ok(skew),
        Ok(Err(e)) => Err(super::one_line(&e)),
        Err(_) => Err(format!("no answer within {DAEMON_PATIENCE:?}")),
    }
}

pub fn check_daemon(d: &Daemon, socket: &Path) -> Check {
    const NAME: &str = "daemon";
    match d {
        Daemon::Running { node_id, .. } if node_id.is_empty() => Check::ok(
            NAME,
            format!("running at {}, in no cluster", socket.display()),
        ),
        Daemon::Running { node_id, manager } => Check::ok(
            NAME,
            format!(
                "running at {}, node {node_id} ({})",
                socket.display(),
                if *manager { "manager" } else { "worker" }
            ),
        ),
        Daemon::NotRunning => Check::ok(NAME, format!("not running (no {})", socket.display())),
        Daemon::Silent(why) => Check::warn(
            NAME,
            format!("{} exists but no daemon answers: {why}", socket.display()),
            "restart it (systemctl restart mesh), or remove the stale socket",
        ),
    }
}

// ---- output ----

/// The fields of `--format` templates.
pub(super) const CHECK_ROWS: RowKind = RowKind {
    fields: &[
        ("Status", "STATUS"),
        ("Check", "CHECK"),
        ("Detail", "DETAIL"),
        ("Fix", "FIX"),
    ],
    table: &["Status", "Check", "Detail", "Fix"],
};

fn row(c: &Check) -> format::Row {
    vec![
        c.status.word().to_string(),
        c.name.clone(),
        c.detail.clone(),
        c.fix.clone().unwrap_or_default(),
    ]
}

fn doc(c: &Check) -> Value {
    json!({
        "status": c.status.word(),
        "check": c.name,
        "detail": c.detail,
        "fix": c.fix,
    })
}

/// The report for people: a line per check, its fix under it, then a count.
pub fn render_text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<7}  {:<width$}  {}\n",
            c.status.word(),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<7}  {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "{} checks: {} ok, {} warn, {} problem\n",
        checks.len(),
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Problem)
    ));
    out
}

fn write_report(out: &mut impl Write, format: &Format, checks: &[Check]) -> anyhow::Result<()> {
    match format {
        Format::Table => out.write_all(render_text(checks).as_bytes())?,
        Format::Json => {
            let docs: Vec<Value> = checks.iter().map(doc).collect();
            format::write_docs(out, format, &docs)?;
        }
        Format::Template(_) => {
            let rows: Vec<format::Row> = checks.iter().map(row).collect();
            format::write_rows(out, &CHECK_ROWS, format, &rows)?;
        }
    }
    Ok(())
}

// ---- reading the host ----

/// Largest output of a command or file read here: a ruleset of many thousand rules fits.
const MAX_READ: u64 = 64 << 20;

/// The first `MAX_READ` bytes of a file.
fn read_bounded(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_READ)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// A command's stdout, or its first line of error.
fn output_of(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => CommandError::NotInstalled,
            _ => CommandError::Failed(format!("cannot run {program}: {e}")),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(CommandError::Failed(format!(
            "{} ({})",
            line.trim(),
            out.status
        )));
    }
    if out.stdout.len() as u64 > MAX_READ {
        return Err(CommandError::Failed(format!(
            "its output is larger than {MAX_READ} bytes"
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

enum CommandError {
    NotInstalled,
    Failed(String),
}

fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

fn module(name: &str) -> Module {
    if Path::new("/sys/module").join(name).exists() {
        return Module::Loaded;
    }
    let Some(release) = kernel_release() else {
        return Module::Unknown;
    };
    let dir = Path::new("/lib/modules").join(release);
    let listed = |file: &str| {
        read_bounded(&dir.join(file))
            .ok()
            .map(|text| module_listed(&text, name))
    };
    match (listed("modules.builtin"), listed("modules.dep")) {
        (Some(true), _) => Module::Builtin,
        (_, Some(true)) => Module::Available,
        (Some(false), Some(false)) => Module::Missing,
        _ => Module::Unknown,
    }
}

/// Whether a `modules.builtin` or `modules.dep` text lists module `name` (`.../vxlan.ko`,
/// compressed or not; `-` and `_` are the same in module names).
pub fn module_listed(text: &str, name: &str) -> bool {
    let want = name.replace('-', "_");
    text.lines().any(|line| {
        let path = line.split(':').next().unwrap_or("");
        let file = path.rsplit('/').next().unwrap_or("");
        let stem = file.split(".ko").next().unwrap_or("");
        file.contains(".ko") && stem.replace('-', "_") == want
    })
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn bind(p: Port) -> Bind {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, p.port));
    let result = if p.udp {
        UdpSocket::bind(addr).map(drop)
    } else {
        TcpListener::bind(addr).map(drop)
    };
    match result {
        Ok(()) => Bind::Free,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Bind::InUse,
        Err(e) => Bind::Failed(e.to_string()),
    }
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn default_route_mtu() -> Option<(String, u32)> {
    let routes = crate::daemon::host_net::device_routes();
    let (dev, _) = routes.iter().find(|(_, net)| net.prefix_len() == 0)?;
    let mtu = sysctl(&format!("/sys/class/net/{dev}/mtu"))?.parse().ok()?;
    Some((dev.clone(), mtu))
}

fn certificate(path: &Path) -> Cert {
    match read_bounded(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Cert::Absent,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Cert::Denied,
        Err(e) => Cert::Unreadable(format!("cannot read it: {e}")),
        Ok(pem) => match mesh_common::pki::parse_cert_pem(&pem) {
            Ok(id) => Cert::NotAfter(id.not_after),
            Err(e) => Cert::Unreadable(format!("not a certificate: {e}")),
        },
    }
}

/// How long the daemon gets to answer.
const DAEMON_PATIENCE: Duration = Duration::from_secs(3);

async fn daemon(socket: &Path, host: &str) -> Daemon {
    if !socket.exists() {
        return Daemon::NotRunning;
    }
    let ask = async {
        let channel = client::connect(host).await?;
        let info = LocalClient::new(channel)
            .info(InfoRequest {})
            .await?
            .into_inner();
        anyhow::Ok(Daemon::Running {
            manager: info.role() == NodeRole::Manager,
            node_id: info.node_id,
        })
    };
    match tokio::time::timeout(DAEMON_PATIENCE, ask).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => Daemon::Silent(super::one_line(&e)),
        Err(_) => Daemon::Silent(format!("no answer within {DAEMON_PATIENCE:?}")),
    }
}

/// Reads this host and runs every check, in the order printed.
pub fn gather(host: &str, state_dir: &Path) -> anyhow::Result<Vec<Check>> {
    let socket = client::socket_path(host)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let daemon = rt.block_on(daemon(&socket, host));
    let skew = match &daemon {
        Daemon::Running { node_id, .. } if !node_id.is_empty() => {
            Some(rt.block_on(clock_skew(host)))
        }
        _ => None,
    };
    let running = matches!(daemon, Daemon::Running { .. });
    let root = nix::unistd::geteuid().is_root();

    let mut checks = Vec::new();
    if !root {
        checks.push(Check::warn(
            "privileges",
            "not root: some checks cannot read what they need",
            "run `mesh doctor` as root",
        ));
    }
    checks.push(check_daemon(&daemon, &socket));
    checks.push(check_vxlan(&module("vxlan")));
    let nft = match output_of("nft", &["list", "tables"]) {
        Ok(_) => Nft::Works,
        Err(CommandError::NotInstalled) => Nft::NotInstalled,
        Err(CommandError::Failed(why)) => Nft::Fails(why),
    };
    checks.push(check_nftables(&nft, root));
    let tracking = Path::new("/proc/sys/net/netfilter").exists()
        || Path::new("/proc/net/nf_conntrack").exists();
    checks.push(check_conntrack(tracking, in_path("conntrack")));
    checks.push(check_ipvs(
        Path::new("/proc/net/ip_vs").exists(),
        &module("ip_vs"),
    ));
    checks.push(check_wireguard(&module("wireguard")));
    checks.push(check_tun(Path::new("/dev/net/tun").exists()));
    for p in PORTS {
        checks.push(check_port(p, &bind(p), running));
    }
    checks.push(check_ip_forward(
        sysctl("/proc/sys/net/ipv4/ip_forward").as_deref(),
    ));
    let rp = |iface: &str| {
        sysctl(&format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter")).and_then(|v| v.parse().ok())
    };
    checks.push(check_rp_filter(rp("all"), rp("default")));
    let ruleset = match output_of("nft", &["-j", "list", "ruleset"]) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .map(|doc| forward_drop_chains(&doc))
            .map_err(|e| format!("`nft -j list ruleset` is not JSON: {e}")),
        Err(CommandError::NotInstalled) => Err("no `nft` command".to_string()),
        Err(CommandError::Failed(why)) => Err(why),
    };
    checks.extend(check_forward_policy(
        ruleset.as_deref().map_err(String::as_str),
    ));
    let underlay = default_route_mtu();
    checks.push(check_mtu(
        underlay.as_ref().map(|(dev, mtu)| (dev.as_str(), *mtu)),
    ));
    checks.push(check_subnets(
        &mesh_ranges(),
        &crate::daemon::host_net::device_routes(),
        &crate::daemon::host_net::resolvers(),
    ));
    let cert = crate::state_dir::StateDir::new(state_dir)
        .certs()
        .join("node.pem");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    checks.push(check_certificate(&certificate(&cert), &cert, now));
    checks.push(check_clock(skew));
    Ok(checks)
}

/// `mesh doctor`: prints the report; exit status 1 when a check found a problem.
pub fn run(host: &str, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let format = Format::parse(&args.format, Some(&CHECK_ROWS))?;
    let checks = gather(host, &args.state_dir)?;
    write_report(&mut io::stdout().lock(), &format, &checks)?;
    let failed = checks.iter().any(|c| c.status == Status::Problem);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests;
