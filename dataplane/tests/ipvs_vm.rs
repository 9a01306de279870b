//! The IPVS backend on a real distribution kernel, in a VM: this machine's kernel has no IPVS.
//!
//! `ipvs_balances_inside_a_debian_cloud_kernel_vm` (on the host) downloads Debian's cloud
//! kernel (cached under the target directory), builds an initramfs holding this very test
//! binary (`dataplane/vm/build-initramfs.sh`), boots it under qemu (TCG, no network) and reads
//! the serial console for the result line. Inside the VM, `/init` loads `ip_vs` and runs
//! `ipvs_inside_vm` (ignored elsewhere), which builds the load-balancing world in namespaces
//! of the VM and proves the IPVS backend with real connections.
//!
//! Needs root, qemu-system-x86, busybox-static, cpio, kmod and Debian's package mirrors. If
//! the kernel cannot be fetched the test fails (it never passes without running the VM).

mod lb_support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lb_support::*;
use mesh_dataplane::lb::{
    self, Backend, IpvsLb, IpvsTimeouts, LbChange, LbService, LbTable, LoadBalancer, plan,
};

/// How long the VM may take from boot to its result line (TCG emulation is slow).
const VM_DEADLINE: Duration = Duration::from_secs(300);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ipvs-vm")
}

#[test]
fn ipvs_balances_inside_a_debian_cloud_kernel_vm() {
    let started = Instant::now();
    let dir = vm_dir();
    let out = dir.join(format!("boot-{}", std::process::id()));
    let _cleanup = RemoveDir(out.clone());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/build-initramfs.sh");
    let me = std::env::current_exe().expect("path of this test binary");
    let build = Command::new("bash")
        .arg(&script)
        .arg(dir.join("cache"))
        .arg(&me)
        .arg(&out)
        .args([
            "--ignored",
            "--exact",
            "ipvs_inside_vm",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run build-initramfs.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    assert!(build.status.success(), "building the VM failed:\n{log}");
    eprintln!("{} in {:?}", log.trim(), started.elapsed());

    let boot = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(out.join("vmlinuz"))
        .arg("-initrd")
        .arg(out.join("initrd.gz"))
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64 (package qemu-system-x86)");

    // The console is read on a thread; lines come back over a channel so the deadline holds
    // even if the VM prints nothing.
    let (tx, rx) = mpsc::channel::<String>();
    let mut stdout = qemu.stdout.take().expect("piped");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                return;
            }
        }
    });
    let mut console = String::new();
    let result = loop {
        // Only whole lines count: a chunk may end in the middle of the result line.
        let complete = &console[..console.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(line) = complete.lines().find(|l| l.starts_with("IPVS-TEST ")) {
            break Some(line.trim().to_owned());
        }
        let left = VM_DEADLINE.saturating_sub(boot.elapsed());
        if left.is_zero() {
            break None;
        }
        match rx.recv_timeout(left) {
            Ok(chunk) => console.push_str(&chunk.replace('\r', "")),
            Err(mpsc::RecvTimeoutError::Timeout) => break None,
            // qemu exited; look at what it printed last.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break console
                    .lines()
                    .find(|l| l.starts_with("IPVS-TEST "))
                    .map(|l| l.trim().to_owned());
            }
        }
    };
    let _ = qemu.kill();
    let waited = qemu.wait_with_output();
    let stderr = waited
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    eprintln!(
        "vm: {:?} from boot to result, {:?} in all",
        boot.elapsed(),
        started.elapsed()
    );
    match result {
        Some(line) if line.starts_with("IPVS-TEST PASS") => eprintln!("{line}"),
        Some(line) => panic!("{line}\n--- console ---\n{console}\n--- qemu stderr ---\n{stderr}"),
        None => panic!(
            "no result line from the VM within {VM_DEADLINE:?}\n--- console ---\n{console}\n--- qemu stderr ---\n{stderr}"
        ),
    }
}

/// Removes a directory when dropped (the per-run boot files; the package cache stays).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spread_ok(counts: &BTreeMap<String, usize>, names: &[&str], n: usize) -> Result<(), String> {
    let total: usize = counts.values().sum();
    let fair = names.iter().all(|name| {
        let got = counts.get(*name).copied().unwrap_or(0);
        got > 0 && got <= n / 2
    });
    if total == n && fair && counts.len() == names.len() {
        Ok(())
    } else {
        Err(format!("not balanced over {names:?}: {counts:?}"))
    }
}

/// Runs inside the VM only (see the module doc); prints `IPVS-TEST PASS ...` at the end.
#[test]
#[ignore = "runs inside the IPVS VM started by ipvs_balances_inside_a_debian_cloud_kernel_vm"]
fn ipvs_inside_vm() {
    assert_eq!(
        std::env::var("MESH_IPVS_VM_INNER").as_deref(),
        Ok("1"),
        "only meaningful inside the VM"
    );
    let t = Instant::now();
    let detected = lb::detect();
    assert_eq!(
        detected,
        Backend::Ipvs,
        "detect() inside a kernel with ip_vs"
    );

    let w = LbWorld::new(3);
    let ipvs = IpvsLb::default();
    let tcp = SocketAddrV4::new(VIP, TCP_PORT);
    let udp = SocketAddrV4::new(VIP, UDP_PORT);
    let all = LbService::new(VIP, w.ips());
    let desired: LbTable = [all.clone()].into_iter().collect();
    let changes = lb::reconcile(&ipvs, w.client.name(), &desired).expect("program ipvs");
    assert_eq!(changes, vec![LbChange::Upsert(all.clone())]);

    let timeouts = lb::ipvs::read_timeouts(w.client.name()).expect("get config");
    assert_eq!(timeouts, IpvsTimeouts::default(), "timeouts read back");
    assert_eq!(
        ipvs.observe(w.client.name()).unwrap(),
        desired,
        "observed = desired"
    );
    assert_eq!(
        plan(&desired, &ipvs.observe(w.client.name()).unwrap()),
        vec![]
    );

    let counts = w.tcp_spread(tcp, 30);
    spread_ok(&counts, &["b1", "b2", "b3"], 30)
        .unwrap_or_else(|e| panic!("tcp: {e}\n{}", w.dump()));
    let udp_counts = w.udp_spread(udp, 12);
    spread_ok(&udp_counts, &["b1", "b2", "b3"], 12).unwrap_or_else(|e| panic!("udp: {e}"));

    // 3 -> 2: b3 gets nothing after.
    let two = LbService::new(VIP, w.ips().into_iter().take(2));
    ipvs.apply(w.client.name(), &[LbChange::Upsert(two.clone())])
        .expect("remove a backend");
    let b3 = w.backend("b3");
    let before = b3.tcp_served.load(Ordering::Relaxed);
    let after = w.tcp_spread(tcp, 20);
    spread_ok(&after, &["b1", "b2"], 20).unwrap_or_else(|e| panic!("after removal: {e}"));
    assert_eq!(b3.tcp_served.load(Ordering::Relaxed), before, "b3 removed");
    assert_eq!(
        ipvs.observe(w.client.name()).unwrap(),
        [two].into_iter().collect::<LbTable>()
    );

    // No backends: refused at once; then the service goes away entirely.
    ipvs.apply(
        w.client.name(),
        &[LbChange::Upsert(LbService::new(VIP, []))],
    )
    .expect("empty the service");
    let refused = w.in_client(|| {
        let start = Instant::now();
        (tcp_ask(tcp), start.elapsed())
    });
    let err = refused.0.expect_err("no backends: refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        refused.1 < Duration::from_secs(1),
        "refused in {:?}",
        refused.1
    );
    ipvs.apply(w.client.name(), &[LbChange::Remove(VIP)])
        .expect("remove the service");
    assert_eq!(ipvs.observe(w.client.name()).unwrap(), LbTable::new());

    let veth = veth_named_like_a_host_link();

    println!(
        "\nIPVS-TEST PASS detect=ipvs tcp={counts:?} udp={udp_counts:?} after-removal={after:?} \
         timeouts=tcp:{}s,fin:{}s,udp:{}s veth={veth} in {:?}",
        timeouts.tcp,
        timeouts.tcp_fin,
        timeouts.udp,
        t.elapsed()
    );
}

/// A task's end of a veth named like a link of the calling namespace (the host's `eth0`
/// beside a task's `eth0`), as the overlay makes it: on Debian's 6.1 kernel creating it
/// directly in the task's namespace fails with EEXIST, so it is made under a staging name and
/// renamed there. Returns what the direct creation did, for the record.
fn veth_named_like_a_host_link() -> String {
    use mesh_dataplane::netlink::handle::{Netlink, in_netns};
    use mesh_dataplane::netns::Netns;
    use mesh_dataplane::types::IfName;
    let name = |s: &str| IfName::new(s).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let root = rt.block_on(async { Netlink::connect("root") }).unwrap();
    let here = Netns::current().unwrap();
    rt.block_on(root.ensure_veth_pair(&name("eth0"), &here, &name("hostpeer0"), &here))
        .expect("the host's eth0");
    let (task, net) = (
        Netns::create("vmtask").unwrap(),
        Netns::create("vmnet").unwrap(),
    );
    let has_eth0 = || in_netns(&task, async |nl| nl.link_index(&name("eth0")).await).unwrap();
    // Its result says nothing here: the EEXIST it may get also means "already made".
    let _ = rt.block_on(root.ensure_veth_pair(&name("eth0"), &task, &name("p0"), &net));
    let direct = if has_eth0().is_some() {
        "direct:made"
    } else {
        "direct:refused,staged"
    };
    if has_eth0().is_none() {
        in_netns(&task, async |nl| {
            root.ensure_veth_pair_named(&name("eth0"), &task, nl, &name("p1"), &net)
                .await
        })
        .expect("the task's eth0 through a staging name");
    }
    assert!(has_eth0().is_some(), "no eth0 in the task's namespace");
    direct.to_owned()
}
