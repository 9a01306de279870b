//! A few "hosts" on one machine: each host is a network namespace whose `ul0` is wired by a veth
//! to the bridge `sw0` of a "switch" namespace. Each host runs the Linux dataplane from its own
//! namespace. Everything is named `mdt<pid>x<n>-...` (a `mesh_lab::NetnsScope`) and removed on
//! drop, also on panic; a crashed run's leftovers are removed by the next run.
//!
//! Shared by the real-traffic tests and the throughput example.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use mesh_dataplane::link::{IfName, Ipv4Cidr, Netlink, in_netns};
use mesh_dataplane::netns::Netns;
use mesh_dataplane::overlay::{
    LinuxDataplane, LocalEndpoint, Mac, NetworkSpec, NodeDataplane, Prefix, RemoteEndpoint, TaskId,
    TaskSandbox, Vni, overlay_mtu,
};
use mesh_lab::NetnsScope;
use mesh_lab::wait::wait_for;

pub fn ifname(s: &str) -> IfName {
    IfName::new(s).expect("valid ifname")
}

pub fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("valid cidr")
}

pub fn vni(n: u32) -> Vni {
    Vni::new(n).expect("valid vni")
}

/// One host: its namespace, underlay address, dataplane and desired state.
pub struct Host {
    pub ns: Netns,
    pub underlay: Ipv4Addr,
    pub dp: LinuxDataplane,
    pub desired: NodeDataplane,
}

impl Host {
    /// The overlay MTU this host derives from its underlay interface.
    pub fn overlay_mtu(&self) -> u32 {
        overlay_mtu(&self.ns, self.underlay, None).expect("overlay mtu")
    }

    /// The namespace of task `id` on this host.
    pub fn task_ns(&self, id: &str) -> Netns {
        Netns::open(&self.desired.prefix.task_netns(&task_id(id))).expect("task namespace")
    }

    /// The name of the sandbox of network `vni` on this host.
    pub fn network_ns_name(&self, v: u32) -> String {
        self.desired.prefix.network_netns(vni(v))
    }
}

pub struct World {
    pub root: String,
    pub switch: Netns,
    pub hosts: Vec<Host>,
    /// Owns every namespace of the world, the dataplane's sandboxes included; last, so the
    /// hosts' handles are closed before it removes them.
    _scope: NetnsScope,
}

pub fn task_id(s: &str) -> TaskId {
    TaskId::new(s).expect("valid task id")
}

impl World {
    /// `n` hosts `h1..hn` with underlay addresses 192.168.77.i/24 on links of MTU `mtu`.
    pub fn new(n: usize, mtu: u32) -> World {
        let scope = NetnsScope::new("mdt").expect("namespace scope");
        let root = scope.prefix().to_owned();
        let switch = scope.create("sw").expect("switch namespace");
        let sw0 = ifname("sw0");
        in_netns(&switch, async |nl| {
            nl.ensure_bridge(&sw0).await?;
            nl.set_mtu(&sw0, mtu).await?;
            nl.set_up(&sw0).await
        })
        .expect("switch bridge");
        let mut hosts = Vec::new();
        for i in 1..=n {
            let ns = scope.create(&format!("h{i}")).expect("host namespace");
            let underlay = Ipv4Addr::new(192, 168, 77, i as u8);
            let port = ifname(&format!("p{i}"));
            let ul0 = ifname("ul0");
            in_netns(&switch, async |nl: &Netlink| {
                nl.ensure_veth_pair(&ul0, &ns, &port, &switch).await?;
                nl.set_mtu(&port, mtu).await?;
                nl.set_controller(&port, &sw0).await?;
                nl.set_up(&port).await
            })
            .expect("switch port");
            in_netns(&ns, async |nl| {
                nl.set_up(&ifname("lo")).await?;
                nl.set_mtu(&ul0, mtu).await?;
                nl.ensure_address(&ul0, Ipv4Cidr::new(underlay, 24)?)
                    .await?;
                nl.set_up(&ul0).await
            })
            .expect("host underlay");
            let prefix = Prefix::new(format!("{root}-h{i}-")).expect("valid prefix");
            let desired = NodeDataplane::new(prefix, underlay);
            let dp = LinuxDataplane::new(ns.try_clone().expect("namespace handle"));
            hosts.push(Host {
                ns,
                underlay,
                dp,
                desired,
            });
        }
        World {
            root,
            switch,
            hosts,
            _scope: scope,
        }
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i - 1]
    }

    /// Runs `nft -f -` in the switch namespace.
    pub fn switch_nft(&self, script: &str) {
        nft(&self.switch, script);
    }

    /// Installs counters on the switch: all VXLAN packets, and those whose inner frame is ARP or
    /// broadcast (flooding that static entries and ARP proxying must make impossible).
    pub fn count_underlay(&self, port: u16) {
        // Offsets into the UDP header: 8 (UDP) + 8 (VXLAN) bytes, then the inner Ethernet
        // header: destination at bit 128, ethertype at bit 224.
        self.switch_nft(&format!(
            "table bridge mtest {{\n\
             \tcounter tunneled {{}}\n\
             \tcounter tunneled_arp {{}}\n\
             \tcounter tunneled_bcast {{}}\n\
             \tchain watch {{\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tether type ip udp dport {port} counter name \"tunneled\"\n\
             \t\tether type ip udp dport {port} @th,224,16 0x0806 counter name \"tunneled_arp\"\n\
             \t\tether type ip udp dport {port} @th,128,48 0xffffffffffff counter name \"tunneled_bcast\"\n\
             \t}}\n\
             }}\n"
        ));
    }

    /// Packets counted so far by the switch counter `name`.
    pub fn underlay_count(&self, name: &str) -> u64 {
        let out = run_in(
            &self.switch,
            "nft",
            &["list", "counter", "bridge", "mtest", name],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let packets = text
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .unwrap_or_else(|| panic!("no packets in {text:?}"));
        packets.parse().expect("packet count")
    }
}

/// Builds the desired state of one host's task: `endpoints` as (vni, ifname, address).
pub fn task(id: &str, endpoints: &[(u32, &str, &str)], egress: Option<&str>) -> TaskSandbox {
    TaskSandbox {
        id: task_id(id),
        endpoints: endpoints
            .iter()
            .map(|(v, n, a)| LocalEndpoint::new(vni(*v), ifname(n), cidr(a)))
            .collect(),
        egress: egress.map(cidr),
    }
}

/// A network spec with the given MTU.
pub fn network(v: u32, gateway: &str, mtu: u32, internal: bool) -> NetworkSpec {
    NetworkSpec {
        vni: vni(v),
        gateway: cidr(gateway),
        mtu,
        internal,
    }
}

/// The remote endpoint record of `addr` (an endpoint address) living on `on`.
pub fn remote_of(v: u32, addr: &str, on: &Host) -> RemoteEndpoint {
    let ip = cidr(addr).addr();
    RemoteEndpoint {
        vni: vni(v),
        ip,
        mac: Mac::from_ipv4(ip),
        vtep: on.underlay,
    }
}

/// Runs a program inside `ns` and returns its output.
pub fn run_in(ns: &Netns, program: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    ns.enter_on_exec(&mut cmd).expect("enter namespace");
    cmd.output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
}

/// Runs a program inside the named namespace `name` (by `ip netns exec`, as an operator would).
pub fn run_in_named(name: &str, program: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["netns", "exec", name, program];
    full.extend_from_slice(args);
    Command::new("ip")
        .args(&full)
        .output()
        .expect("run ip netns exec")
}

pub fn nft(ns: &Netns, script: &str) {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    ns.enter_on_exec(&mut cmd).expect("enter namespace");
    let mut child = cmd.spawn().expect("spawn nft");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .expect("write script");
    let status = child.wait().expect("nft");
    assert!(status.success(), "nft -f failed for:\n{script}");
}

/// One ICMP echo from `ns` to `ip`, waiting at most a second.
pub fn ping(ns: &Netns, ip: &str) -> bool {
    run_in(ns, "ping", &["-c", "1", "-W", "1", ip])
        .status
        .success()
}

/// Polls `check` until it holds; panics naming `what` after `secs` seconds (scaled by
/// `MESH_TEST_PATIENCE`).
pub fn wait_until(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(secs), || Ok(check())).unwrap_or_else(|e| panic!("{e:#}"));
}

/// A TCP server in `ns` on `addr` that echoes every connection until the peer closes.
pub fn echo_server(ns: &Netns, addr: &str) -> SocketAddr {
    let listener = ns
        .run(|| TcpListener::bind(addr))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let local = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    local
}

/// Connects from `ns` to `to` within `timeout`.
pub fn connect(ns: &Netns, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    ns.run(|| TcpStream::connect_timeout(&to, timeout))
        .expect("enter namespace")
}

/// Sends `msg` on `conn` and reads the echo back.
pub fn echo(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back)?;
    Ok(back)
}

/// Whether a TCP echo round trip from `ns` to `to` succeeds within a second.
pub fn tcp_echo_works(ns: &Netns, to: SocketAddr) -> bool {
    let Ok(mut conn) = connect(ns, to, Duration::from_secs(1)) else {
        return false;
    };
    matches!(echo(&mut conn, b"hello over the overlay"), Ok(back) if back == b"hello over the overlay")
}
