//! The routing mesh's kernel state: published ports on the node, and the reply routing that
//! lets tasks see (and answer) the real client address.
//!
//! # The path of a routed connection
//! 1. **Node** (the daemon's namespace): our table `ip <table>` (default `mesh_ingress`) holds
//!    one DNAT rule per published port, for packets addressed to one of the node's own
//!    addresses (`fib daddr type local`). Ingress mode rewrites the destination to the
//!    service's VIP on the `ingress` network and target port; host mode to the local task's
//!    gateway address and target port. The node routes the ingress subnet to its ingress
//!    sandbox's gateway address ([`Netlink::replace_route`]).
//! 2. **Ingress sandbox** (a namespace with an address on the `ingress` overlay and one on the
//!    gateway bridge): forwarding on, and the service load balancer (nftables or IPVS, the
//!    same as in tasks) rewrites the VIP to one task's ingress address anywhere in the cluster.
//! 3. **Task**: a TCP connection arrives with the client's own source address (nothing was
//!    source-NATed); UDP arrives from the sandbox's address ([`udp_snat_script`] says why).
//!    Our table `ip mesh_reply` marks the connection by the MAC of the sandbox it came from
//!    ([`reply_mark`]); `tcp_fwmark_accept` makes the accepted socket carry the
//!    mark, and a route chain copies it onto every other reply packet. A policy rule per
//!    sandbox sends marked replies to a routing table whose default route is that sandbox,
//!    so the reply goes back through the node that did the DNAT, where conntrack undoes both
//!    rewrites.
//!
//! Every table here is ours, replaced as a whole in one `nft -f` transaction; no other table
//! is read, flushed or changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::error::{Error, Result};
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::nft;
use crate::types::{IfName, Mac};

/// Suffix of the node's publication table: `<masquerade table>_ingress`.
pub const PUBLISH_TABLE_SUFFIX: &str = "_ingress";
/// Our table in a task's namespace that marks routed connections.
pub const REPLY_TABLE: &str = "mesh_reply";
/// Priority of the policy rules that route marked replies (below `main`'s 32766).
pub const REPLY_RULE_PRIORITY: u32 = 20480;
/// Marks and routing tables of reply routing: this bit plus the low 24 bits of the sandbox
/// address, so a sandbox keeps its mark for as long as it keeps its address.
const REPLY_MARK_BASE: u32 = 0x0100_0000;

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as nftables and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One port published on the node: connections to any of the node's addresses on
/// `published` go to `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Publication {
    pub protocol: Protocol,
    pub published: u16,
    pub target: SocketAddrV4,
}

/// The `nft -f` script that replaces table `table` by one holding exactly `pubs` (an empty
/// list leaves an empty table, so "nothing published" is observable too).
pub fn publish_script(table: &str, pubs: &[Publication]) -> String {
    let mut rules = String::new();
    for p in pubs {
        let _ = writeln!(
            rules,
            "\t\tfib daddr type local {proto} dport {port} dnat to {target} comment \"mesh-publish {proto}/{port}\"",
            proto = p.protocol.as_str(),
            port = p.published,
            target = p.target,
        );
    }
    // The output chain serves clients on the node itself, 127.0.0.1 included. A connection
    // from a loopback address leaves through the gateway bridge (route_localnet, set by
    // `apply_publications`) masqueraded to the bridge's address, so its replies come back.
    // The guard keeps route_localnet from opening the node's loopback services to anything
    // on the bridge: only replies (and loopback itself) may reach 127.0.0.0/8 from outside.
    let body = format!(
        "\tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {rules}\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         {rules}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr 127.0.0.0/8 oifname != \"lo\" ct status dnat masquerade comment \"mesh-publish loopback\"\n\
         \t}}\n\
         \tchain guard {{\n\
         \t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tiifname != \"lo\" ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop comment \"mesh-publish loopback guard\"\n\
         \t}}\n"
    );
    nft::replace_table_script(table, &body)
}

/// Replaces the node's publication table `table` in `ns` by one holding exactly `pubs`.
/// Published ports also answer on the node's loopback addresses: `bridge` (the gateway
/// bridge, where every DNAT target is routed) gets `route_localnet` when a port is published.
pub fn apply_publications(
    ns: &Netns,
    table: &str,
    pubs: &[Publication],
    bridge: &IfName,
) -> Result<()> {
    nft::check_table_name(table)?;
    if !pubs.is_empty() {
        let path = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", bridge.as_str());
        write_sysctl(ns, &path, "1")?;
    }
    nft::run_script(ns, &publish_script(table, pubs))
}

/// The mark (and routing table id) of replies to connections that came in through the
/// ingress sandbox at `sandbox`.
pub fn reply_mark(sandbox: Ipv4Addr) -> u32 {
    REPLY_MARK_BASE | (u32::from(sandbox) & 0x00ff_ffff)
}

/// The `nft -f` script of a task's reply-marking table: connections entering by `iface`
/// from one of `sandboxes` (by source MAC) get that sandbox's mark.
pub fn reply_script(iface: &IfName, sandboxes: &[(Ipv4Addr, Mac)]) -> String {
    let elements: Vec<String> = sandboxes
        .iter()
        .map(|(ip, mac)| format!("{mac} : {:#x}", reply_mark(*ip)))
        .collect();
    let map = if elements.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {} }}\n", elements.join(", "))
    };
    let body = format!(
        "\tmap sandboxes {{\n\
         \t\ttype ether_addr : mark\n\
         {map}\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tiifname \"{iface}\" ct state new ct mark set ether saddr map @sandboxes\n\
         \t\tct mark != 0 meta mark set ct mark\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype route hook output priority mangle; policy accept;\n\
         \t\tct mark != 0 meta mark set ct mark\n\
         \t}}\n",
        iface = iface.as_str(),
    );
    nft::replace_table_script(REPLY_TABLE, &body)
}

/// Makes replies of connections routed in through any of `sandboxes` (address and MAC on the
/// ingress network, reached by `iface`) leave through the sandbox they came from, in the task
/// namespace `ns`. Idempotent; sandboxes no longer listed lose their rule and route.
pub fn ensure_reply_routing(
    ns: &Netns,
    iface: &IfName,
    sandboxes: &[(Ipv4Addr, Mac)],
) -> Result<()> {
    // Loose source validation: the client is not routed out of `iface` by the main table.
    for path in [
        "/proc/sys/net/ipv4/conf/all/rp_filter".to_string(),
        format!("/proc/sys/net/ipv4/conf/{}/rp_filter", iface.as_str()),
    ] {
        write_sysctl(ns, &path, "0")?;
    }
    write_sysctl(ns, "/proc/sys/net/ipv4/tcp_fwmark_accept", "1")?;
    nft::run_script(ns, &reply_script(iface, sandboxes))?;
    let wanted: BTreeMap<u32, Ipv4Addr> = sandboxes
        .iter()
        .map(|(ip, _)| (reply_mark(*ip), *ip))
        .collect();
    let name = ns.name().to_owned();
    let iface = iface.clone();
    ns.run_async(async move || {
        let r = Netlink::connect(name)?;
        let present = r.fwmark_rules(REPLY_RULE_PRIORITY).await?;
        for mark in present.keys().filter(|m| !wanted.contains_key(m)) {
            r.remove_fwmark_rule(*mark, REPLY_RULE_PRIORITY).await?;
            r.remove_route(*mark, None).await?;
        }
        for (mark, via) in &wanted {
            r.replace_route(*mark, None, *via, &iface).await?;
            if !present.contains_key(mark) {
                r.add_fwmark_rule(*mark, *mark, REPLY_RULE_PRIORITY).await?;
            }
        }
        Ok(())
    })?
}

/// Our table in an ingress sandbox that source-NATs routed UDP.
pub const SANDBOX_SNAT_TABLE: &str = "mesh_snat";

/// The `nft -f` script of an ingress sandbox's UDP source NAT: UDP forwarded from the gateway
/// bridge (`from`) onto the ingress overlay (`to`) leaves with the sandbox's address.
///
/// Why UDP only: a UDP server bound to the wildcard address picks the source of its reply by a
/// route lookup that no mark has steered yet, so without this the reply would leave by the
/// task's gateway with the wrong source, and a client checking where answers come from (every
/// DNS client) would drop it. TCP keeps the client's address (see the module doc); UDP through
/// the routing mesh shows the task the sandbox's address instead.
pub fn udp_snat_script(from: &IfName, to: &IfName) -> String {
    let body = format!(
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tiifname \"{from}\" oifname \"{to}\" meta l4proto udp masquerade comment \"mesh-ingress udp\"\n\
         \t}}\n",
        from = from.as_str(),
        to = to.as_str(),
    );
    nft::replace_table_script(SANDBOX_SNAT_TABLE, &body)
}

/// Installs [`udp_snat_script`] in the ingress sandbox `ns`.
pub fn ensure_udp_snat(ns: &Netns, from: &IfName, to: &IfName) -> Result<()> {
    nft::run_script(ns, &udp_snat_script(from, to))
}

/// Turns the namespace `ns` into a router: forwarding on and no strict source validation
/// (clients are routed in by the gateway bridge and answered the same way).
pub fn ensure_router(ns: &Netns, ifaces: &[IfName]) -> Result<()> {
    write_sysctl(ns, "/proc/sys/net/ipv4/ip_forward", "1")?;
    write_sysctl(ns, "/proc/sys/net/ipv4/conf/all/rp_filter", "0")?;
    for i in ifaces {
        write_sysctl(
            ns,
            &format!("/proc/sys/net/ipv4/conf/{}/rp_filter", i.as_str()),
            "0",
        )?;
    }
    Ok(())
}

/// Writes a `/proc/sys/net` file from a thread inside `ns` (those files are per namespace).
fn write_sysctl(ns: &Netns, path: &str, value: &str) -> Result<()> {
    let owned = path.to_owned();
    ns.run(move || std::fs::write(&owned, value))?
        .map_err(|source| Error::Path {
            op: "write",
            path: path.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_script_replaces_the_table_with_one_rule_per_port_and_path() {
        let pubs = [
            Publication {
                protocol: Protocol::Tcp,
                published: 8080,
                target: "10.255.0.5:80".parse().unwrap(),
            },
            Publication {
                protocol: Protocol::Udp,
                published: 5353,
                target: "172.30.0.9:53".parse().unwrap(),
            },
        ];
        let s = publish_script("mesh_ingress", &pubs);
        assert!(s.starts_with("table ip mesh_ingress {}\ndelete table ip mesh_ingress\n"));
        assert!(s.contains(
            "\t\tfib daddr type local tcp dport 8080 dnat to 10.255.0.5:80 comment \"mesh-publish tcp/8080\"\n"
        ));
        // The same rules for the node's own clients, loopback included.
        assert_eq!(s.matches("dnat to").count(), 4, "{s}");
        assert!(!s.contains("127.0.0.0/8 fib"), "{s}");
        assert!(s.contains("ip saddr 127.0.0.0/8 oifname != \"lo\" ct status dnat masquerade"));
        assert!(s.contains(
            "iifname != \"lo\" ip daddr 127.0.0.0/8 ct state != { established, related } drop"
        ));
        let empty = publish_script("mesh_ingress", &[]);
        assert_eq!(empty.matches("dnat to").count(), 0);
        assert!(empty.contains("chain prerouting"));
    }

    #[test]
    fn udp_snat_covers_udp_from_the_bridge_to_the_overlay_only() {
        let s = udp_snat_script(&IfName::new("gw0").unwrap(), &IfName::new("eth0").unwrap());
        assert!(
            s.starts_with("table ip mesh_snat {}\ndelete table ip mesh_snat\n"),
            "{s}"
        );
        assert!(
            s.contains("iifname \"gw0\" oifname \"eth0\" meta l4proto udp masquerade"),
            "{s}"
        );
        assert_eq!(s.matches("masquerade").count(), 1, "{s}");
    }

    #[test]
    fn reply_marks_follow_the_sandbox_address() {
        let a = reply_mark("10.255.0.2".parse().unwrap());
        let b = reply_mark("10.255.1.2".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(a, 0x01ff_0002);
        assert!(a > 255, "never a reserved routing table id");
        let s = reply_script(
            &IfName::new("eth1").unwrap(),
            &[("10.255.0.2".parse().unwrap(), Mac([2, 0x42, 10, 255, 0, 2]))],
        );
        assert!(
            s.contains("elements = { 02:42:0a:ff:00:02 : 0x1ff0002 }"),
            "{s}"
        );
        assert!(s.contains("iifname \"eth1\" ct state new ct mark set ether saddr map @sandboxes"));
        assert!(!reply_script(&IfName::new("eth1").unwrap(), &[]).contains("elements"));
    }
}
