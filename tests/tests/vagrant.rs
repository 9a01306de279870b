//! The cluster of `vagrant/` for real: three Debian VMs under vagrant-libvirt (software
//! emulation), mesh installed from this tree's Debian package and started by systemd, the
//! cluster formed and the demo service (`whoami`, published on 8080) deployed by
//! `vagrant/up.sh`. Then what only real kernels and hosts show:
//!
//! - every VM runs `mesh.service`, and the manager lists three ready nodes;
//! - Debian's kernel has IPVS, and the agents chose it;
//! - from a task on one VM, a service's name resolves to its VIP, and requests through it
//!   reach its tasks on every VM (IPVS balancing, across VXLAN between VMs);
//! - its published port answers from this host on every VM's address, the client address kept;
//! - a VM rebooted (`vagrant reload`) comes back as the same node, with its task of a global
//!   service running again and the routing mesh answering on it;
//! - a VM halted is seen down and its replicated tasks run elsewhere.
//!
//! The VMs are named `mvt<pid>_node1..3` (libvirt) with their own Vagrant state directory;
//! they are destroyed when the test ends, also on failure, and a run that crashed leaves them
//! to the next one, which removes every `mvt` domain first (VM tests run alone).
//! `MESH_TEST_VMS_KEEP=1` leaves them up after the test, to look at a failure.
//!
//! Needs vagrant, vagrant-libvirt, libvirt and the package (`MESH_DEB`, or the newest
//! `target/debian/mesh_*.deb`: `node/debian/build-deb.sh`). Where one is missing the test says
//! why and passes without running; `MESH_TEST_VMS=require` (what `scripts/test.sh` sets) makes
//! that a failure. Run it alone: `cargo nextest run -p mesh-tests --test vagrant`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mesh_tests::command::run;
use mesh_tests::{Poll, wait_for};
use serde_json::Value;

const PREFIX: &str = "mvt";
const NODES: [&str; 3] = ["node1", "node2", "node3"];
const NET: &str = "192.168.56";
const PUBLISHED: u16 = 8080;
/// Under software emulation everything is several times slower than on a host.
const BOOT: Duration = Duration::from_secs(600);
const CONVERGE: Duration = Duration::from_secs(180);

fn vagrant_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vagrant")
}

fn vagrant_home() -> String {
    std::env::var("VAGRANT_HOME").unwrap_or_else(|_| "/var/lib/mesh-vagrant/vagrant.d".into())
}

fn addr(node: &str) -> String {
    let i: usize = node.trim_start_matches("node").parse().unwrap_or(0);
    format!("{NET}.{}", 10 + i)
}

fn elapsed(start: Instant) -> String {
    format!("{:.0} s", start.elapsed().as_secs_f64())
}

/// Why the test cannot run here, if it cannot.
fn missing(deb: &Option<PathBuf>) -> Option<String> {
    for tool in ["vagrant", "virsh", "libvirtd"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("{tool} is not installed (scripts/setup.sh)"));
        }
    }
    if deb.is_none() {
        return Some("no package: run node/debian/build-deb.sh or set MESH_DEB".into());
    }
    None
}

/// The package to install: `MESH_DEB`, else the newest `target/debian/mesh_*.deb`.
fn package() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MESH_DEB") {
        return Some(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mesh_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Removes every libvirt domain a test run made (`mvt*`) with its disks, and the Vagrant
/// state directories of runs whose process is gone.
fn remove_stale() {
    if let Ok(list) = run(Command::new("virsh").args(["list", "--all", "--name"])) {
        for name in list
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(PREFIX))
        {
            let _ = Command::new("virsh").args(["destroy", name]).output();
            let _ = Command::new("virsh")
                .args(["undefine", name, "--remove-all-storage"])
                .output();
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("mesh-vagrant-") else {
                continue;
            };
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// This run's VMs: destroyed on drop.
struct Vms {
    dotfile: PathBuf,
    prefix: String,
    deb: PathBuf,
}

impl Vms {
    fn vagrant(&self) -> Command {
        let mut cmd = Command::new("vagrant");
        self.env(&mut cmd);
        cmd
    }

    fn env(&self, cmd: &mut Command) {
        cmd.current_dir(vagrant_dir())
            .env("VAGRANT_HOME", vagrant_home())
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("VAGRANT_DOTFILE_PATH", &self.dotfile)
            .env("MESH_VM_PREFIX", &self.prefix)
            .env("MESH_DEB", &self.deb);
    }

    /// `sudo <command>` on `node` over SSH.
    fn on(&self, node: &str, command: &str) -> Result<String> {
        run(self
            .vagrant()
            .args(["ssh", node, "-c", &format!("sudo {command}"), "--", "-q"]))
    }

    fn mesh(&self, node: &str, args: &str) -> Result<String> {
        self.on(node, &format!("mesh {args}"))
    }

    fn nodes(&self, from: &str) -> Result<Vec<Value>> {
        let out = self.mesh(from, "node ls --format json")?;
        serde_json::from_str(&out).with_context(|| format!("node ls: {out}"))
    }

    fn tasks(&self, service: &str) -> Result<Vec<Value>> {
        let out = self.mesh("node1", &format!("service ps {service} --format json"))?;
        serde_json::from_str(&out).with_context(|| format!("service ps: {out}"))
    }

    fn running(&self, service: &str) -> Result<Vec<Value>> {
        Ok(self
            .tasks(service)?
            .into_iter()
            .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
            .collect())
    }

    /// `GET /?format=json` on `node`'s published port, from this host.
    fn routed(&self, node: &str) -> Result<Value> {
        let out = run(Command::new("curl").args([
            "-fsS",
            "--max-time",
            "5",
            &format!("http://{}:{PUBLISHED}/?format=json", addr(node)),
        ]))?;
        serde_json::from_str(&out).with_context(|| format!("answer: {out}"))
    }

    /// What the cluster looked like, for a failure message.
    fn report(&self) -> String {
        let mut out = String::new();
        for node in NODES {
            let seen = self
                .on(
                    node,
                    "sh -c 'mesh node ls; mesh service ls; mesh service ps client; \
                     mesh service ps whoami; systemctl is-active mesh; \
                     journalctl -u mesh --no-pager -n 15'",
                )
                .unwrap_or_else(|e| format!("{e:#}"));
            out.push_str(&format!("--- {node}\n{seen}\n"));
        }
        out
    }
}

impl Drop for Vms {
    fn drop(&mut self) {
        if std::env::var_os("MESH_TEST_VMS_KEEP").is_some() {
            eprintln!(
                "MESH_TEST_VMS_KEEP: the VMs stay (VAGRANT_DOTFILE_PATH={}); the next run removes them",
                self.dotfile.display()
            );
            return;
        }
        let _ = self.vagrant().args(["destroy", "-f"]).output();
        remove_stale();
        let _ = std::fs::remove_dir_all(self.dotfile.parent().unwrap_or(&self.dotfile));
    }
}

#[test]
fn three_vms_form_a_cluster_through_systemd_and_serve_across_real_kernels() {
    let require = std::env::var("MESH_TEST_VMS").is_ok_and(|v| v == "require");
    let deb = package();
    if let Some(why) = missing(&deb) {
        assert!(!require, "the VM test cannot run: {why}");
        eprintln!("vagrant test skipped: {why} (MESH_TEST_VMS=require fails instead)");
        return;
    }
    remove_stale();
    let dir = std::env::temp_dir().join(format!("mesh-vagrant-{}", std::process::id()));
    let vms = Vms {
        dotfile: dir.join(".vagrant"),
        prefix: format!("{PREFIX}{}_", std::process::id()),
        deb: deb.expect("checked above"),
    };
    if let Err(e) = check(&vms) {
        panic!("{e:#}\n{}", vms.report());
    }
}

fn check(vms: &Vms) -> Result<()> {
    let start = Instant::now();
    let mut up = Command::new(vagrant_dir().join("up.sh"));
    vms.env(&mut up);
    run(&mut up).context("vagrant/up.sh")?;
    eprintln!("3 VMs up, cluster formed after {}", elapsed(start));

    // systemd runs the daemon everywhere, and the manager sees three ready nodes.
    for node in NODES {
        let active = vms.on(node, "systemctl is-active mesh")?;
        ensure!(
            active.trim() == "active",
            "{node}: mesh.service is {active}"
        );
    }
    let nodes = vms.nodes("node1")?;
    let ready = nodes.iter().filter(|n| n["status"] == "ready").count();
    ensure!(ready == 3, "node1 sees {ready} ready nodes: {nodes:?}");
    // Debian's kernel has IPVS: the agents use it.
    for node in NODES {
        let chosen = vms.on(
            node,
            "sh -c 'journalctl -u mesh --no-pager | grep \"load balancing backend\" | tail -1'",
        )?;
        ensure!(
            chosen.contains("ipvs"),
            "{node}: the agent did not choose IPVS: {chosen:?}"
        );
    }

    // vagrant/up.sh deployed the demo: `whoami`, 3 replicas on the overlay network `demo`,
    // published on port 8080. A client task on every node joins it.
    vms.mesh(
        "node1",
        "service create --name client --mode global --network demo -- mesh whoami --port 81",
    )?;
    let served = wait_for("3 running whoami tasks on 3 VMs", CONVERGE, || {
        let tasks = vms.running("whoami")?;
        let mut on: Vec<String> = tasks
            .iter()
            .filter_map(|t| t["node"].as_str().map(str::to_owned))
            .collect();
        on.sort();
        on.dedup();
        Ok(if tasks.len() == 3 && on.len() == 3 {
            Poll::Ready(tasks)
        } else {
            Poll::Pending(format!("{} running on {on:?}", tasks.len()))
        })
    })?;
    let clients = wait_for("a client task on every VM", CONVERGE, || {
        let tasks = vms.running("client")?;
        Ok(if tasks.len() == 3 {
            Poll::Ready(tasks)
        } else {
            Poll::Pending(format!("{} running", tasks.len()))
        })
    })?;
    eprintln!("services running after {}", elapsed(start));

    // From node2's client: the name resolves to the VIP, and the VIP reaches every task, on
    // every VM (IPVS in the task's namespace, VXLAN between the VMs).
    let client = clients
        .iter()
        .find(|t| t["node"] == "node2")
        .and_then(|t| t["name"].as_str())
        .context("a client on node2")?
        .to_owned();
    let service: Value = serde_json::from_str(&vms.mesh("node1", "service inspect whoami")?)?;
    let resolved = vms.mesh("node2", &format!("exec {client} -- getent hosts whoami"))?;
    let vip = resolved.split_whitespace().next().unwrap_or_default();
    ensure!(
        !vip.is_empty() && service.to_string().contains(&format!("\"{vip}/")),
        "`whoami` resolves to {vip:?} in {client}, not its VIP: {service}"
    );
    let ipvs = vms.mesh("node2", &format!("exec {client} -- cat /proc/net/ip_vs"))?;
    ensure!(
        ipvs.lines().any(|l| l.starts_with("FWM")),
        "no IPVS service in {client}'s namespace:\n{ipvs}"
    );
    let want: std::collections::BTreeSet<String> = served
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    let seen = wait_for(
        "answers from every whoami task through the VIP",
        CONVERGE,
        || {
            let out = vms.mesh(
                "node2",
                &format!(
                    "exec {client} -- sh -c 'for i in 1 2 3 4 5 6 7 8 9; do \
                 curl -fsS --max-time 3 \"http://whoami/?format=json\" || exit; echo; done'"
                ),
            )?;
            let mut seen = std::collections::BTreeSet::new();
            for line in out.lines().filter(|l| !l.trim().is_empty()) {
                let r: Value = serde_json::from_str(line).with_context(|| format!("{line:?}"))?;
                seen.insert(r["task_id"].as_str().unwrap_or_default().to_owned());
            }
            Ok(if seen == want {
                Poll::Ready(seen)
            } else {
                Poll::Pending(format!("{seen:?} of {want:?}"))
            })
        },
    )?;
    eprintln!("VIP {vip} from {client} reached {} tasks", seen.len());

    // The routing mesh: every VM's address answers, and the task sees this host's address.
    for node in NODES {
        let r = wait_for(&format!("{node}:{PUBLISHED} to answer"), CONVERGE, || {
            Ok(vms.routed(node).ok())
        })?;
        let client = r["client"].as_str().unwrap_or_default();
        ensure!(
            client.starts_with(&format!("{NET}.1:")) || client == format!("{NET}.1"),
            "{node}: the task saw client {client:?}, not this host ({NET}.1): {r}"
        );
    }
    eprintln!(
        "routing mesh answered on all 3 VMs after {}",
        elapsed(start)
    );

    // A reboot: node3 comes back as the same node, its client task runs again, and its
    // published port answers.
    let id_before = vms.mesh("node3", "info --format json")?;
    let id_before: Value = serde_json::from_str(&id_before)?;
    let t = Instant::now();
    run(vms.vagrant().args(["reload", "node3"])).context("vagrant reload node3")?;
    wait_for("node3 ready again", BOOT, || {
        Ok(vms
            .nodes("node1")?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count()
            == 3)
    })?;
    let id_after: Value = serde_json::from_str(&vms.mesh("node3", "info --format json")?)?;
    ensure!(
        id_after["node_id"] == id_before["node_id"],
        "node3 came back as {} instead of {}",
        id_after["node_id"],
        id_before["node_id"]
    );
    wait_for("node3's client task running again", CONVERGE, || {
        Ok(vms.running("client")?.iter().any(|t| t["node"] == "node3"))
    })?;
    wait_for("node3's published port answering again", CONVERGE, || {
        Ok(vms.routed("node3").ok())
    })?;
    eprintln!("node3 rebooted and back in {}", elapsed(t));

    // A halt: node3 (running a whoami replica) is seen down, and the replicas run on the
    // other two. node3's replica may have moved during the reboot: 5 replicas put one there.
    vms.mesh("node1", "service scale whoami=5")?;
    wait_for("5 whoami replicas, one on node3", CONVERGE, || {
        let tasks = vms.running("whoami")?;
        Ok(tasks.len() == 5 && tasks.iter().any(|t| t["node"] == "node3"))
    })?;
    let t = Instant::now();
    run(vms.vagrant().args(["halt", "node3"])).context("vagrant halt node3")?;
    wait_for("node3 down", CONVERGE, || {
        Ok(vms
            .nodes("node1")?
            .iter()
            .any(|n| n["hostname"] == "node3" && n["status"] == "down"))
    })?;
    wait_for("whoami's 5 replicas on node1 and node2", CONVERGE, || {
        let tasks = vms.running("whoami")?;
        Ok(tasks.len() == 5 && tasks.iter().all(|t| t["node"] != "node3"))
    })?;
    eprintln!(
        "node3 halted: down and its tasks rescheduled in {}; whole test {}",
        elapsed(t),
        elapsed(start)
    );
    Ok(())
}
