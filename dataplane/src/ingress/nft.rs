//! Our three tables of the routing mesh in nftables: the scripts that write them (each replaces
//! its table whole, in one `nft -f` transaction) and the parsers that read them back from
//! `nft -j list table` into the observed model.
//!
//! A table that does not hold exactly what its script writes reads as
//! [`Table::Other`], so the plan rewrites it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde_json::Value;

use crate::ingress::model::{Protocol, Publication, REPLY_TABLE, SANDBOX_SNAT_TABLE, reply_mark};
use crate::ingress::observed::{ReplyTable, Snat, Table};
use crate::nft::replace_table_script;
use crate::types::{IfName, Mac};

/// Leads the comment of each publication rule, followed by `<protocol>/<port>`.
const PUBLISH_COMMENT: &str = "mesh-publish";
const LOOPBACK_COMMENT: &str = "mesh-publish loopback";
const GUARD_COMMENT: &str = "mesh-publish loopback guard";
const SNAT_COMMENT: &str = "mesh-ingress udp";

/// The `nft -f` script that replaces table `table` by one holding exactly `pubs` (an empty
/// list leaves an empty table, so "nothing published" is observable too).
pub fn publish_script(table: &str, pubs: &[Publication]) -> String {
    let mut rules = String::new();
    for p in pubs {
        let _ = writeln!(
            rules,
            "\t\tfib daddr type local {proto} dport {port} dnat to {target} comment \"{PUBLISH_COMMENT} {proto}/{port}\"",
            proto = p.protocol.as_str(),
            port = p.published,
            target = p.target,
        );
    }
    // The output chain serves clients on the node itself, 127.0.0.1 included. A connection
    // from a loopback address leaves through the gateway bridge (route_localnet, set with the
    // table) masqueraded to the bridge's address, so its replies come back.
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
         \t\tip saddr 127.0.0.0/8 oifname != \"lo\" ct status dnat masquerade comment \"{LOOPBACK_COMMENT}\"\n\
         \t}}\n\
         \tchain guard {{\n\
         \t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tiifname != \"lo\" ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop comment \"{GUARD_COMMENT}\"\n\
         \t}}\n"
    );
    replace_table_script(table, &body)
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
    replace_table_script(REPLY_TABLE, &body)
}

/// The `nft -f` script of an ingress sandbox's UDP source NAT: UDP forwarded from the gateway
/// bridge (`from`) onto the ingress overlay (`to`) leaves with the sandbox's address.
///
/// Why UDP only: a UDP server bound to the wildcard address picks the source of its reply by a
/// route lookup that no mark has steered yet, so without this the reply would leave by the
/// task's gateway with the wrong source, and a client checking where answers come from (every
/// DNS client) would drop it. TCP keeps the client's address (see the module doc of
/// [`crate::ingress`]); UDP through the routing mesh shows the task the sandbox's address.
pub fn udp_snat_script(from: &IfName, to: &IfName) -> String {
    let body = format!(
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tiifname \"{from}\" oifname \"{to}\" meta l4proto udp masquerade comment \"{SNAT_COMMENT}\"\n\
         \t}}\n",
        from = from.as_str(),
        to = to.as_str(),
    );
    replace_table_script(SANDBOX_SNAT_TABLE, &body)
}

/// The objects of one table as `nft -j list table` prints them.
struct Listing {
    /// Rules by chain, in order.
    rules: BTreeMap<String, Vec<Value>>,
    /// Map elements by map name.
    maps: BTreeMap<String, Vec<Value>>,
}

impl Listing {
    fn parse(json: &[u8]) -> Option<Listing> {
        let doc: Value = serde_json::from_slice(json).ok()?;
        let mut listing = Listing {
            rules: BTreeMap::new(),
            maps: BTreeMap::new(),
        };
        for item in doc.get("nftables")?.as_array()? {
            if let Some(chain) = item.get("chain") {
                let name = chain.get("name")?.as_str()?;
                listing.rules.entry(name.to_owned()).or_default();
            } else if let Some(rule) = item.get("rule") {
                let chain = rule.get("chain")?.as_str()?;
                listing
                    .rules
                    .entry(chain.to_owned())
                    .or_default()
                    .push(rule.clone());
            } else if let Some(map) = item.get("map") {
                let name = map.get("name")?.as_str()?;
                let elems = map.get("elem").and_then(Value::as_array).cloned();
                listing
                    .maps
                    .insert(name.to_owned(), elems.unwrap_or_default());
            }
        }
        Some(listing)
    }

    fn chain(&self, name: &str) -> &[Value] {
        self.rules.get(name).map_or(&[], Vec::as_slice)
    }

    /// The chains' names, sorted.
    fn chains(&self) -> Vec<&str> {
        self.rules.keys().map(String::as_str).collect()
    }
}

fn comment(rule: &Value) -> Option<&str> {
    rule.get("comment")?.as_str()
}

fn exprs(rule: &Value) -> &[Value] {
    rule.get("expr")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The right-hand side of the `meta <key> == X` match of a rule.
fn meta_match<'a>(rule: &'a Value, key: &str) -> Option<&'a str> {
    exprs(rule).iter().find_map(|e| {
        let m = e.get("match")?;
        (m.pointer("/left/meta/key")?.as_str()? == key && m.get("op")?.as_str()? == "==")
            .then(|| m.get("right")?.as_str())?
    })
}

/// The publication of one prerouting or output rule, if it is one of ours.
fn publication(rule: &Value) -> Option<Publication> {
    let mut port = None;
    let mut target = None;
    for e in exprs(rule) {
        if let Some(m) = e.get("match")
            && m.pointer("/left/payload/field").and_then(Value::as_str) == Some("dport")
        {
            let proto = match m.pointer("/left/payload/protocol")?.as_str()? {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            port = Some((proto, u16::try_from(m.get("right")?.as_u64()?).ok()?));
        } else if let Some(d) = e.get("dnat") {
            let addr: Ipv4Addr = d.get("addr")?.as_str()?.parse().ok()?;
            let p = u16::try_from(d.get("port")?.as_u64()?).ok()?;
            target = Some(SocketAddrV4::new(addr, p));
        }
    }
    let ((protocol, published), target) = (port?, target?);
    let tag = format!("{PUBLISH_COMMENT} {}/{published}", protocol.as_str());
    (comment(rule) == Some(tag.as_str())).then_some(Publication {
        protocol,
        published,
        target,
    })
}

/// Reads back a table written by [`publish_script`].
pub fn parse_publish(json: &[u8]) -> Table<BTreeSet<Publication>> {
    let read = || -> Option<BTreeSet<Publication>> {
        let l = Listing::parse(json)?;
        if l.chains() != ["guard", "output", "postrouting", "prerouting"] {
            return None;
        }
        let of = |chain| -> Option<Vec<Publication>> {
            l.chain(chain).iter().map(publication).collect()
        };
        let (pre, out) = (of("prerouting")?, of("output")?);
        let pubs: BTreeSet<Publication> = pre.iter().copied().collect();
        let single = |chain, tag| matches!(l.chain(chain), [r] if comment(r) == Some(tag));
        (pre == out
            && pubs.len() == pre.len()
            && single("postrouting", LOOPBACK_COMMENT)
            && single("guard", GUARD_COMMENT))
        .then_some(pubs)
    };
    read().map_or(Table::Other, Table::Ours)
}

/// Reads back a table written by [`reply_script`].
pub fn parse_reply(json: &[u8]) -> Table<ReplyTable> {
    let read = || -> Option<ReplyTable> {
        let l = Listing::parse(json)?;
        if l.chains() != ["output", "prerouting"] || l.maps.len() != 1 {
            return None;
        }
        let mut marks = BTreeMap::new();
        for e in l.maps.get("sandboxes")? {
            let [mac, mark] = e.as_array()?.as_slice() else {
                return None;
            };
            let mark = u32::try_from(mark.as_u64()?).ok()?;
            marks.insert(mac.as_str()?.parse::<Mac>().ok()?, mark);
        }
        let [mark, _copy] = l.chain("prerouting") else {
            return None;
        };
        if l.chain("output").len() != 1 {
            return None;
        }
        let iface = IfName::new(meta_match(mark, "iifname")?).ok()?;
        Some(ReplyTable { iface, marks })
    };
    read().map_or(Table::Other, Table::Ours)
}

/// Reads back a table written by [`udp_snat_script`].
pub fn parse_snat(json: &[u8]) -> Table<Snat> {
    let read = || -> Option<Snat> {
        let l = Listing::parse(json)?;
        let (["postrouting"], [rule]) = (l.chains().as_slice(), l.chain("postrouting")) else {
            return None;
        };
        if comment(rule) != Some(SNAT_COMMENT) || meta_match(rule, "l4proto") != Some("udp") {
            return None;
        }
        Some(Snat {
            from: IfName::new(meta_match(rule, "iifname")?).ok()?,
            to: IfName::new(meta_match(rule, "oifname")?).ok()?,
        })
    };
    read().map_or(Table::Other, Table::Ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubs() -> Vec<Publication> {
        vec![
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
        ]
    }

    #[test]
    fn publish_script_replaces_the_table_with_one_rule_per_port_and_path() {
        let s = publish_script("mesh_ingress", &pubs());
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

    // What nft 1.0.6 prints (`nft -j list table`) for tables written by the scripts above.
    const PUBLISHED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "mesh_ingress", "handle": 2}}, {"chain": {"family": "ip", "table": "mesh_ingress", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "mesh_ingress", "name": "output", "handle": 2, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "mesh_ingress", "name": "postrouting", "handle": 3, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "mesh_ingress", "name": "guard", "handle": 4, "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "mesh_ingress", "chain": "prerouting", "handle": 5, "comment": "mesh-publish tcp/8080", "expr": [{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}, {"dnat": {"addr": "10.255.0.5", "port": 80}}]}}, {"rule": {"family": "ip", "table": "mesh_ingress", "chain": "output", "handle": 7, "comment": "mesh-publish tcp/8080", "expr": [{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}, {"dnat": {"addr": "10.255.0.5", "port": 80}}]}}, {"rule": {"family": "ip", "table": "mesh_ingress", "chain": "postrouting", "handle": 9, "comment": "mesh-publish loopback", "expr": []}}, {"rule": {"family": "ip", "table": "mesh_ingress", "chain": "guard", "handle": 10, "comment": "mesh-publish loopback guard", "expr": []}}]}"#;
    const REPLY: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "mesh_reply", "handle": 4}}, {"map": {"family": "ip", "name": "sandboxes", "table": "mesh_reply", "type": "ether_addr", "handle": 3, "map": "mark", "elem": [["02:42:0a:ff:00:02", 33488898], ["02:42:0a:ff:00:03", 33488899]]}}, {"chain": {"family": "ip", "table": "mesh_reply", "name": "prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}, {"chain": {"family": "ip", "table": "mesh_reply", "name": "output", "handle": 2, "type": "route", "hook": "output", "prio": -150, "policy": "accept"}}, {"rule": {"family": "ip", "table": "mesh_reply", "chain": "prerouting", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth1"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}, {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"map": {"key": {"payload": {"protocol": "ether", "field": "saddr"}}, "data": "@sandboxes"}}}}]}}, {"rule": {"family": "ip", "table": "mesh_reply", "chain": "prerouting", "handle": 5, "expr": [{"match": {"op": "!=", "left": {"ct": {"key": "mark"}}, "right": 0}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}}]}}, {"rule": {"family": "ip", "table": "mesh_reply", "chain": "output", "handle": 6, "expr": [{"match": {"op": "!=", "left": {"ct": {"key": "mark"}}, "right": 0}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}}]}}]}"#;
    const SNAT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "mesh_snat", "handle": 6}}, {"chain": {"family": "ip", "table": "mesh_snat", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"rule": {"family": "ip", "table": "mesh_snat", "chain": "postrouting", "handle": 2, "comment": "mesh-ingress udp", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "gw0"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"masquerade": null}]}}]}"#;

    #[test]
    fn listings_are_read_back_and_anything_else_is_other() {
        assert_eq!(
            parse_publish(PUBLISHED.as_bytes()),
            Table::Ours(pubs()[..1].iter().copied().collect())
        );
        // The output chain lost its rule: not what the script writes.
        let tampered = PUBLISHED.replacen("\"chain\": \"output\"", "\"chain\": \"guard\"", 1);
        assert_eq!(parse_publish(tampered.as_bytes()), Table::Other);
        let reply = parse_reply(REPLY.as_bytes());
        let Table::Ours(reply) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(reply.iface.as_str(), "eth1");
        assert_eq!(
            reply.marks.get(&"02:42:0a:ff:00:03".parse().unwrap()),
            Some(&0x01ff_0003)
        );
        assert_eq!(
            parse_snat(SNAT.as_bytes()),
            Table::Ours(Snat {
                from: IfName::new("gw0").unwrap(),
                to: IfName::new("eth0").unwrap()
            })
        );
        assert_eq!(parse_snat(b"{}"), Table::Other);
    }
}
