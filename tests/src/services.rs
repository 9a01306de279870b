//! Overlay networks and services through the CLI, and what each host's kernel shows of them:
//! the VXLAN FDB and neighbor entries of a network's namespace, the load balancer of a task's
//! namespace. With [`wait`] and [`check`], whose failures carry the lab's diagnostics plus
//! [`overlay_report`] (the daemon's own namespaces, which the lab's dump does not cover).
//!
//! Names of the daemon's namespaces (the lab gives each daemon `--netns-prefix
//! <lab prefix>-<host>-`): `<lab prefix>-<host>-n<vni>` for a network,
//! `<lab prefix>-<host>-t<first 12 characters of the task id>` for a task.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use mesh_dataplane::lb::{self, LbTable};
use serde_json::Value;

use crate::ops::CLI_BOUND;
use crate::traffic::WHOAMI_PORT;
use crate::{Host, IntoPoll, Lab, Netns, Poll, mesh_binary};

/// How long a `service create`/`scale`/`update`/`rm` may take: the CLI waits for the service
/// to converge (a rolling update of a few tasks with the drain period of each).
pub const CONVERGE_BOUND: Duration = Duration::from_secs(40);

/// The command of a test service's tasks: `<mesh binary> whoami --port 80`.
pub fn whoami() -> Vec<String> {
    vec![
        mesh_binary().display().to_string(),
        "whoami".into(),
        "--port".into(),
        WHOAMI_PORT.to_string(),
    ]
}

/// `mesh ARGS` on `host`, expected to succeed within `bound`: its stdout.
pub fn cli_ok(host: &Host, args: &[&str], bound: Duration) -> Result<String> {
    host.cli_with_timeout(args, bound)?
        .ok_stdout()
        .with_context(|| format!("mesh {} on {}", args.join(" "), host.name()))
}

/// One network as `mesh network inspect` shows it.
#[derive(Debug, Clone)]
pub struct NetworkRow {
    pub id: String,
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub internal: bool,
}

/// `mesh network create NAME FLAGS...` on `host`, then its row.
pub fn create_network(host: &Host, name: &str, flags: &[&str]) -> Result<NetworkRow> {
    let mut args = vec!["network", "create"];
    args.extend_from_slice(flags);
    args.push(name);
    cli_ok(host, &args, CLI_BOUND)?;
    network(host, name)
}

/// `mesh network inspect NAME` on `host`.
pub fn network(host: &Host, name: &str) -> Result<NetworkRow> {
    let out = cli_ok(host, &["network", "inspect", name], CLI_BOUND)?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("inspect {out:?}"))?;
    let n = &v[0];
    Ok(NetworkRow {
        id: n["id"].as_str().context("network without id")?.to_owned(),
        name: n["name"].as_str().unwrap_or_default().to_owned(),
        vni: n["vni"].as_u64().context("network without vni")? as u32,
        subnet: n["subnet"].as_str().unwrap_or_default().to_owned(),
        internal: n["internal"].as_bool().unwrap_or(false),
    })
}

/// `mesh service create --name NAME ARGS... -- <mesh> whoami --port 80` on `host`; the CLI
/// returns once the service converged (unless `ARGS` has `-d`).
pub fn create_service(host: &Host, name: &str, args: &[&str]) -> Result<()> {
    let command = whoami();
    let mut argv = vec!["service", "create", "--name", name];
    argv.extend_from_slice(args);
    argv.push("--");
    argv.extend(command.iter().map(String::as_str));
    cli_ok(host, &argv, CONVERGE_BOUND).map(drop)
}

/// One task as `mesh service ps --format json` shows it.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub name: String,
    pub service: String,
    /// Hostname of its node (`node2`).
    pub node: String,
    pub state: String,
    pub desired_state: String,
    pub spec_version: u64,
    /// (network id, address, MAC) of each attachment.
    pub attachments: Vec<(String, Ipv4Addr, String)>,
    pub raw: Value,
}

impl TaskRow {
    fn from_json(v: &Value) -> Result<TaskRow> {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let mut attachments = Vec::new();
        for a in v["addresses"].as_array().into_iter().flatten() {
            let cidr = a["addr"].as_str().unwrap_or_default();
            if cidr.is_empty() {
                continue;
            }
            let ip = cidr.split('/').next().unwrap_or_default();
            let ip: Ipv4Addr = ip
                .parse()
                .with_context(|| format!("task address {cidr:?}"))?;
            attachments.push((
                a["network"].as_str().unwrap_or_default().to_owned(),
                ip,
                a["mac"].as_str().unwrap_or_default().to_ascii_lowercase(),
            ));
        }
        Ok(TaskRow {
            id: s("id"),
            name: s("name"),
            service: s("service"),
            node: s("node"),
            state: s("state"),
            desired_state: s("desired_state"),
            spec_version: v["spec_version"].as_u64().unwrap_or(0),
            attachments,
            raw: v.clone(),
        })
    }

    /// Running, and meant to.
    pub fn is_running(&self) -> bool {
        self.state == "running" && self.desired_state == "running"
    }

    /// Its address on network `network_id`.
    pub fn addr_on(&self, network_id: &str) -> Option<Ipv4Addr> {
        self.attachments
            .iter()
            .find(|(n, _, _)| n == network_id)
            .map(|(_, ip, _)| *ip)
    }

    /// Its MAC on network `network_id` (lower case).
    pub fn mac_on(&self, network_id: &str) -> Option<String> {
        self.attachments
            .iter()
            .find(|(n, _, _)| n == network_id)
            .map(|(_, _, mac)| mac.clone())
    }

    /// Its whoami on network `network_id`.
    pub fn endpoint_on(&self, network_id: &str) -> Option<SocketAddrV4> {
        self.addr_on(network_id)
            .map(|ip| SocketAddrV4::new(ip, WHOAMI_PORT))
    }

    /// Its namespace's name in `lab`.
    pub fn netns_name(&self, lab: &Lab) -> String {
        format!(
            "{}-{}-t{}",
            lab.prefix(),
            self.node,
            &self.id[..self.id.len().min(12)]
        )
    }

    /// Its namespace, open.
    pub fn netns(&self, lab: &Lab) -> Result<Netns> {
        let name = self.netns_name(lab);
        Netns::open(&name).with_context(|| format!("the namespace of task {}", self.name))
    }
}

/// `mesh service ps SERVICE --format json` on `host`: every task, old ones included.
pub fn tasks(host: &Host, service: &str) -> Result<Vec<TaskRow>> {
    let out = cli_ok(
        host,
        &["service", "ps", service, "--format", "json"],
        CLI_BOUND,
    )?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("service ps {out:?}"))?;
    v.as_array()
        .with_context(|| format!("service ps printed {out}"))?
        .iter()
        .map(TaskRow::from_json)
        .collect()
}

/// The tasks of `service` that run and are meant to.
pub fn running(host: &Host, service: &str) -> Result<Vec<TaskRow>> {
    Ok(tasks(host, service)?
        .into_iter()
        .filter(TaskRow::is_running)
        .collect())
}

/// Waits until exactly `n` tasks of `service` run (and are meant to) and no other task of it
/// runs any more; returns them.
pub fn wait_running(
    lab: &Lab,
    host: &Host,
    service: &str,
    n: usize,
    deadline: Duration,
) -> Result<Vec<TaskRow>> {
    wait(
        lab,
        &format!("{n} running tasks of {service} and no other"),
        deadline,
        || {
            let all = tasks(host, service)?;
            let live: Vec<TaskRow> = all.iter().filter(|t| t.is_running()).cloned().collect();
            let others = all
                .iter()
                .filter(|t| !t.is_running() && t.state == "running")
                .count();
            Ok(if live.len() == n && others == 0 {
                Poll::Ready(live)
            } else {
                Poll::Pending(task_summary(&all))
            })
        },
    )
}

/// `name@node:state/desired` of each task, for messages.
pub fn task_summary(tasks: &[TaskRow]) -> String {
    tasks
        .iter()
        .map(|t| format!("{}@{}:{}/{}", t.name, t.node, t.state, t.desired_state))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The VIP of `service` on network `network_id`.
pub fn vip(host: &Host, service: &str, network_id: &str) -> Result<Ipv4Addr> {
    let out = cli_ok(host, &["service", "inspect", service], CLI_BOUND)?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("inspect {out:?}"))?;
    let addr = v[0]["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["network"] == network_id)
        .and_then(|x| x["addr"].as_str())
        .with_context(|| format!("{service} has no VIP on {network_id}: {out}"))?;
    addr.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("VIP {addr:?}"))
}

/// The service names of `mesh service ls` on `host`.
pub fn service_names(host: &Host) -> Result<Vec<String>> {
    let out = cli_ok(host, &["service", "ls", "--format", "json"], CLI_BOUND)?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("service ls {out:?}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect())
}

/// The name of `host`'s namespace of the network with `vni`.
pub fn network_netns_name(lab: &Lab, host: &Host, vni: u32) -> String {
    format!("{}-{}-n{vni}", lab.prefix(), host.name())
}

/// Output of `argv` run inside the namespace named `netns`; `None` if there is no such
/// namespace.
pub fn run_in(netns: &str, argv: &[&str]) -> Result<Option<String>> {
    let Ok(ns) = Netns::open(netns) else {
        return Ok(None);
    };
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    ns.enter_on_exec(&mut cmd)?;
    let out = cmd
        .output()
        .with_context(|| format!("run {argv:?} in {netns}"))?;
    ensure!(
        out.status.success(),
        "{argv:?} in {netns}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The remote entries of `vxlan0` in `host`'s namespace of network `vni` (`bridge fdb show
/// dev vxlan0`, lines with `dst`): MAC (lower case) -> underlay address. Empty if the host has
/// no namespace for that network.
pub fn fdb(lab: &Lab, host: &Host, vni: u32) -> Result<BTreeMap<String, Ipv4Addr>> {
    let ns = network_netns_name(lab, host, vni);
    let Some(out) = run_in(&ns, &["bridge", "fdb", "show", "dev", "vxlan0"])? else {
        return Ok(BTreeMap::new());
    };
    let mut entries = BTreeMap::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = words.iter().position(|w| *w == "dst") else {
            continue;
        };
        let dst: Ipv4Addr = words
            .get(i + 1)
            .and_then(|d| d.parse().ok())
            .with_context(|| format!("fdb line {line:?} in {ns}"))?;
        entries.insert(words[0].to_ascii_lowercase(), dst);
    }
    Ok(entries)
}

/// The neighbor entries on `vxlan0` in `host`'s namespace of network `vni` (`ip neigh show
/// dev vxlan0`): address -> MAC (lower case). Empty if there is no such namespace.
pub fn neighbors(lab: &Lab, host: &Host, vni: u32) -> Result<BTreeMap<Ipv4Addr, String>> {
    let ns = network_netns_name(lab, host, vni);
    let Some(out) = run_in(&ns, &["ip", "neigh", "show", "dev", "vxlan0"])? else {
        return Ok(BTreeMap::new());
    };
    let mut entries = BTreeMap::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(ip), Some(i)) = (
            words.first().and_then(|w| w.parse::<Ipv4Addr>().ok()),
            words.iter().position(|w| *w == "lladdr"),
        ) else {
            continue;
        };
        let mac = words.get(i + 1).copied().unwrap_or_default();
        entries.insert(ip, mac.to_ascii_lowercase());
    }
    Ok(entries)
}

/// The load balancer as programmed in namespace `ns` (VIP -> backends), read the way the
/// agent's backend reads it (nftables or IPVS, whichever this kernel gives the agent).
pub fn lb_table(ns: &Netns) -> Result<LbTable> {
    static BACKEND: OnceLock<lb::Backend> = OnceLock::new();
    let backend = *BACKEND.get_or_init(lb::detect);
    backend
        .load_balancer()
        .observe(ns.name())
        .with_context(|| format!("observe the {backend} load balancer in {}", ns.name()))
}

/// Polls `check` like [`Lab::wait_for`]; on timeout the error also carries
/// [`overlay_report`].
pub fn wait<T, R: IntoPoll<T>>(
    lab: &Lab,
    what: &str,
    deadline: Duration,
    check: impl FnMut() -> Result<R>,
) -> Result<T> {
    lab.wait_for(what, deadline, check)
        .map_err(|e| anyhow!("{e:#}\n{}", overlay_report(lab)))
}

/// Checks once; a failure carries the diagnostics of [`wait`].
pub fn check<T, R: IntoPoll<T>>(
    lab: &Lab,
    what: &str,
    check: impl FnMut() -> Result<R>,
) -> Result<T> {
    wait(lab, what, Duration::ZERO, check)
}

/// Fails with `message` and the diagnostics of [`wait`] unless `ok`.
pub fn ensure_or_dump(
    lab: &Lab,
    ok: bool,
    what: &str,
    message: impl FnOnce() -> String,
) -> Result<()> {
    if ok {
        return Ok(());
    }
    let message = message();
    check(lab, what, || Ok(Poll::<()>::Fail(message.clone())))
}

/// The daemons' own namespaces (networks and tasks) of every host: addresses, routes, the
/// VXLAN FDB and neighbors, the load balancer table; then `mesh service ps` of every service
/// as the first running host sees it.
pub fn overlay_report(lab: &Lab) -> String {
    let mut out = String::from("===== overlay and task namespaces\n");
    let dash = format!("{}-", lab.prefix());
    let mut names: Vec<String> = Netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.strip_prefix(&dash).is_some_and(|rest| rest.contains('-')))
        .collect();
    names.sort();
    for name in names {
        let task = name.rsplit('-').next().is_some_and(|s| s.starts_with('t'));
        let mut commands: Vec<&[&str]> = vec![&["ip", "-br", "addr"], &["ip", "route"]];
        if task {
            commands.push(&["nft", "list", "table", "ip", "mesh_lb"]);
        } else {
            commands.push(&["bridge", "fdb", "show", "dev", "vxlan0"]);
            commands.push(&["ip", "neigh"]);
        }
        out.push_str(&format!("===== {name}\n"));
        for argv in commands {
            out.push_str(&format!("--- {}\n", argv.join(" ")));
            match run_in(&name, argv) {
                Ok(Some(text)) => out.push_str(&text),
                Ok(None) => out.push_str("(gone)\n"),
                Err(e) => out.push_str(&format!("({e:#})\n")),
            }
        }
    }
    if let Some(host) = lab.hosts().iter().find(|h| h.is_running()) {
        let names = service_names(host).unwrap_or_default();
        let mut args = vec!["service", "ps"];
        args.extend(names.iter().map(String::as_str));
        if !names.is_empty() {
            out.push_str(&format!("===== mesh service ps on {}\n", host.name()));
            match host.cli_with_timeout(&args, Duration::from_secs(5)) {
                Ok(o) => out.push_str(&format!("{o}\n")),
                Err(e) => out.push_str(&format!("({e:#})\n")),
            }
        }
    }
    out
}

/// The remote entries one host's namespace of a network should hold: MAC -> underlay
/// address (FDB) and address -> MAC (neighbors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayEntries {
    pub fdb: BTreeMap<String, Ipv4Addr>,
    pub neighbors: BTreeMap<Ipv4Addr, String>,
}

/// What `host`'s namespace of `network` holds now.
pub fn observe_overlay(lab: &Lab, host: &Host, network: &NetworkRow) -> Result<OverlayEntries> {
    Ok(OverlayEntries {
        fdb: fdb(lab, host, network.vni)?,
        neighbors: neighbors(lab, host, network.vni)?,
    })
}

/// What `host`'s namespace of `network` should hold given `tasks`: an entry for each task
/// attached to `network` on another host.
pub fn expected_overlay(
    lab: &Lab,
    host: &Host,
    network: &NetworkRow,
    tasks: &[TaskRow],
) -> Result<OverlayEntries> {
    let mut want = OverlayEntries::default();
    for t in tasks.iter().filter(|t| t.node != host.name()) {
        let (Some(ip), Some(mac)) = (t.addr_on(&network.id), t.mac_on(&network.id)) else {
            continue;
        };
        let underlay = lab
            .host_named(&t.node)
            .with_context(|| format!("task {} on unknown node {}", t.name, t.node))?
            .ip();
        want.fdb.insert(mac.clone(), underlay);
        want.neighbors.insert(ip, mac);
    }
    Ok(want)
}

/// Waits until the namespace of `network` on each of `hosts` holds exactly the entries of
/// the running tasks of `services` on the other hosts (as `cli` lists them).
pub fn wait_overlay_matches(
    lab: &Lab,
    cli: &Host,
    network: &NetworkRow,
    services: &[&str],
    hosts: &[&Host],
    deadline: Duration,
) -> Result<()> {
    wait(
        lab,
        &format!(
            "the FDB and neighbors of {} on {} to be those of the running tasks of {services:?}",
            network.name,
            hosts.iter().map(|h| h.name()).collect::<Vec<_>>().join(",")
        ),
        deadline,
        || {
            let mut all = Vec::new();
            for s in services {
                all.extend(running(cli, s)?);
            }
            for host in hosts {
                let want = expected_overlay(lab, host, network, &all)?;
                let seen = observe_overlay(lab, host, network)?;
                if want != seen {
                    return Ok(Poll::Pending(format!(
                        "{}: want {want:?}, seen {seen:?}",
                        host.name()
                    )));
                }
            }
            Ok(Poll::Ready(()))
        },
    )
}

/// Waits until the load balancer in the namespace of each of `clients` sends `vip` to
/// exactly `backends`.
pub fn wait_lb(
    lab: &Lab,
    clients: &[TaskRow],
    vip: Ipv4Addr,
    backends: &std::collections::BTreeSet<Ipv4Addr>,
    deadline: Duration,
) -> Result<()> {
    wait(
        lab,
        &format!(
            "the load balancers of {} to send {vip} to {backends:?}",
            clients
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
        deadline,
        || {
            for t in clients {
                let table = lb_table(&t.netns(lab)?)?;
                let seen = table.get(vip).map(|s| s.backends.clone());
                if seen.as_ref() != Some(backends) {
                    return Ok(Poll::Pending(format!("{} ({}): {seen:?}", t.name, t.node)));
                }
            }
            Ok(Poll::Ready(()))
        },
    )
}
