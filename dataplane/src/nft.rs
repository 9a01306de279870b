//! Our nftables tables, through the `nft` binary: the masquerade rule that gives tasks egress,
//! the DNS redirect of a task, and what every table of ours is written and read with
//! (replacing a table whole in one transaction, listing one, checking a table name).
//!
//! The masquerade rule lives in one table of our own (family `ip`, name from the config,
//! `mesh` by default): it is replaced as a whole in one `nft -f` transaction (so it is never
//! half written) and deleted as a whole. No other table is read, flushed or changed. The rule
//! carries a comment that restates its inputs, so observing it needs no JSON parsing: the
//! comment is what we compare.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::types::{IfName, Ipv4Cidr};

/// The `nft` binary, found on `PATH`.
const NFT: &str = "nft";
/// Leads the comment of our masquerade rule.
const COMMENT_TAG: &str = "mesh-masquerade";

/// Masquerade what comes from `source` and leaves by any interface but `bridge`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    /// Name of our table (family `ip`).
    pub table: String,
    pub source: Ipv4Cidr,
    pub bridge: IfName,
}

impl Masquerade {
    fn comment(&self) -> String {
        format!("{COMMENT_TAG} {} {}", self.source, self.bridge)
    }

    /// The `nft -f` script that replaces our table by one holding only this rule.
    pub fn script(&self) -> String {
        replace_table_script(
            &self.table,
            &format!(
                "\tchain postrouting {{\n\
                 \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                 \t\tip saddr {src} oifname != \"{br}\" masquerade comment \"{comment}\"\n\
                 \t}}\n",
                src = self.source,
                br = self.bridge,
                comment = self.comment(),
            ),
        )
    }

    /// Reads back the rule from `nft list table` output, if the table holds one of ours.
    pub fn parse_listing(table: &str, listing: &str) -> Option<Masquerade> {
        let start = listing.find(&format!("comment \"{COMMENT_TAG} "))?;
        let rest = &listing[start + "comment \"".len() + COMMENT_TAG.len() + 1..];
        let comment = &rest[..rest.find('"')?];
        let (source, bridge) = comment.split_once(' ')?;
        Some(Masquerade {
            table: table.to_owned(),
            source: source.parse().ok()?,
            bridge: IfName::new(bridge).ok()?,
        })
    }
}

/// The `nft -f` script that replaces table `ip <table>` (present or not) by one holding `body`
/// (its chains, sets and maps, one per line): applied in one transaction, it is never seen half
/// written.
pub(crate) fn replace_table_script(table: &str, body: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n{body}}}\n")
}

/// Whether `name` is acceptable as a table name of ours.
pub fn check_table_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::InvalidSpec {
            item: format!("nftables table {name:?}"),
            reason: "must be 1 to 64 letters, digits or '_'".into(),
        });
    }
    Ok(())
}

/// Replaces our table in `ns` by one holding only `rule`. Idempotent.
pub fn ensure_masquerade(ns: &Netns, rule: &Masquerade) -> Result<()> {
    check_table_name(&rule.table)?;
    run_script(ns, &rule.script())
}

/// Deletes our table `table` in `ns`; absent is success.
pub fn remove_table(ns: &Netns, table: &str) -> Result<()> {
    check_table_name(table)?;
    run_script(
        ns,
        &format!("table ip {table} {{}}\ndelete table ip {table}\n"),
    )
}

/// Our table in a task's namespace that sends its resolver's well-known port to where the
/// embedded DNS server really listens.
pub const DNS_TABLE: &str = "mesh_dns";

/// Makes connections from `ns` to `addr`:53 go to `addr`:`udp_port` (UDP) and
/// `addr`:`tcp_port` (TCP), by DNAT in the output path: the resolver then holds no port a
/// task might want, as a task binding port 53 on the wildcard address would conflict with a
/// server bound to `addr`:53. Replaces table [`DNS_TABLE`] whole; idempotent.
pub fn ensure_dns_redirect(ns: &Netns, addr: Ipv4Addr, udp_port: u16, tcp_port: u16) -> Result<()> {
    let body = format!(
        "\tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr {addr} udp dport 53 dnat to {addr}:{udp_port}\n\
         \t\tip daddr {addr} tcp dport 53 dnat to {addr}:{tcp_port}\n\
         \t}}\n"
    );
    run_script(ns, &replace_table_script(DNS_TABLE, &body))
}

/// Our masquerade rule in `ns`, if the table exists and holds one.
pub fn observe_masquerade(ns: &Netns, table: &str) -> Result<Option<Masquerade>> {
    check_table_name(table)?;
    Ok(list_table(ns, table, false)?
        .and_then(|out| Masquerade::parse_listing(table, &String::from_utf8_lossy(&out))))
}

/// What `nft list table ip <table>` prints in `ns` (`nft -j` if `json`); `None` if there is
/// no such table.
pub(crate) fn list_table(ns: &Netns, table: &str, json: bool) -> Result<Option<Vec<u8>>> {
    let args = ["-j", "list", "table", "ip", table];
    let args = if json { &args[..] } else { &args[1..] };
    let mut cmd = Command::new(NFT);
    cmd.args(args).stdin(Stdio::null());
    ns.enter_on_exec(&mut cmd)?;
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: NFT,
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(Error::Command {
            program: NFT,
            args: format!("{} (in {})", args.join(" "), ns.name()),
            stderr: stderr.trim().to_owned(),
        });
    }
    Ok(Some(out.stdout))
}

/// Runs `nft -f -` in `netns` with `script` on its standard input: one atomic transaction.
pub(crate) fn run_script(netns: &Netns, script: &str) -> Result<()> {
    let mut cmd = Command::new(NFT);
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    netns.enter_on_exec(&mut cmd)?;
    let spawn_err = |source| Error::Spawn {
        program: NFT,
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes());
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        // The first lines name the failing statement; a 1000-service script is not repeated.
        let head: String = script.lines().take(20).collect::<Vec<_>>().join("\n");
        return Err(Error::Command {
            program: NFT,
            args: format!("-f - in {} <<< {head:?}", netns.name()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    written.map_err(spawn_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_round_trips_through_the_comment() {
        let rule = Masquerade {
            table: "mesh".into(),
            source: "172.30.0.0/16".parse().unwrap(),
            bridge: IfName::new("mesh_gwbridge").unwrap(),
        };
        // What `nft list table ip mesh` prints for our script (nft 1.0.6).
        let listing = "table ip mesh {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 172.30.0.0/16 oifname != \"mesh_gwbridge\" masquerade comment \"mesh-masquerade 172.30.0.0/16 mesh_gwbridge\"\n\t}\n}\n";
        assert_eq!(
            Masquerade::parse_listing("mesh", listing),
            Some(rule.clone())
        );
        assert!(rule.script().contains("delete table ip mesh"));
        assert_eq!(
            Masquerade::parse_listing("mesh", "table ip mesh {\n}\n"),
            None
        );
    }

    #[test]
    fn table_names_are_checked() {
        assert!(check_table_name("mesh").is_ok());
        for bad in ["", "a b", "a;flush ruleset", "x-y"] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }
}
