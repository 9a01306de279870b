//! A load-balancing test world: one client namespace and N backend namespaces on a bridge in a
//! switch namespace (10.77.0.0/24: client .2, backend i at .(10+i)). Each backend runs a TCP
//! server on port 8080 that answers its own name and closes, and a UDP server on 8081 that
//! answers each datagram with its name. Namespaces are named `mlb<pid>x<n>-...` (a
//! `mesh_lab::NetnsScope`) and removed on drop, also on panic; a crashed run's leftovers are
//! removed by the next run.
//!
//! Shared by the nftables tests, the IPVS test inside the VM and the benchmark.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_dataplane::link::{IfName, Ipv4Cidr, Netlink, in_netns};
use mesh_dataplane::netns::Netns;
use mesh_lab::NetnsScope;

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 8081;
/// A port where a bulk server streams bytes (throughput benchmark).
pub const BULK_PORT: u16 = 8082;
/// A port where a server answers its name and then holds the connection open, idle, until the
/// client closes it.
pub const IDLE_PORT: u16 = 8083;

/// The MAC of the test world's interface with `ip`.
fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

pub fn ifname(s: &str) -> IfName {
    IfName::new(s).expect("valid ifname")
}

/// One backend: its namespace, address and how many TCP connections / UDP datagrams it served.
pub struct BackendHost {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub tcp_served: Arc<AtomicU64>,
    pub udp_served: Arc<AtomicU64>,
}

pub struct LbWorld {
    pub root: String,
    pub switch: Netns,
    pub client: Netns,
    pub client_ip: Ipv4Addr,
    pub backends: Vec<BackendHost>,
    /// Owns every namespace of the world; last, so the handles above are closed first.
    _scope: NetnsScope,
}

impl LbWorld {
    /// A client and `n` backends `b1..bn`, servers running.
    pub fn new(n: usize) -> LbWorld {
        let scope = NetnsScope::new("mlb").expect("namespace scope");
        let root = scope.prefix().to_owned();
        let switch = scope.create("sw").expect("switch namespace");
        let br = ifname("br0");
        in_netns(&switch, async |nl| {
            nl.ensure_bridge(&br).await?;
            nl.set_up(&br).await?;
            nl.set_up(&ifname("lo")).await
        })
        .expect("switch bridge");
        let attach = |ns: &Netns, port: &str, ip: Ipv4Addr| {
            let port = ifname(port);
            let eth0 = ifname("eth0");
            in_netns(&switch, async |nl: &Netlink| {
                nl.ensure_veth_pair(&eth0, ns, &port, &switch).await?;
                nl.set_controller(&port, &br).await?;
                nl.set_up(&port).await
            })
            .expect("switch port");
            in_netns(ns, async |nl| {
                nl.set_up(&ifname("lo")).await?;
                nl.set_mac(&eth0, mac_of(ip)).await?;
                nl.ensure_address(&eth0, Ipv4Cidr::new(ip, 24)?).await?;
                nl.set_up(&eth0).await
            })
            .expect("namespace address");
        };
        // Static neighbors, as mesh programs them on its overlays: what is measured is the
        // load balancer, not ARP resolution on a loaded machine (a failed resolution shows as
        // "no route to host").
        let knows = |ns: &Netns, peers: &[Ipv4Addr]| {
            in_netns(ns, async |nl| {
                for ip in peers {
                    nl.replace_neighbor(&ifname("eth0"), *ip, mac_of(*ip))
                        .await?;
                }
                Ok(())
            })
            .expect("static neighbors");
        };
        let client = scope.create("c").expect("client namespace");
        let client_ip = Ipv4Addr::new(10, 77, 0, 2);
        attach(&client, "pc", client_ip);
        let mut backends = Vec::new();
        for i in 1..=n {
            let name = format!("b{i}");
            let ns = scope.create(&name).expect("backend namespace");
            let ip = Ipv4Addr::new(10, 77, 0, 10 + i as u8);
            attach(&ns, &format!("p{i}"), ip);
            let b = BackendHost {
                name,
                ns,
                ip,
                tcp_served: Arc::default(),
                udp_served: Arc::default(),
            };
            b.serve();
            backends.push(b);
        }
        let ips: Vec<Ipv4Addr> = backends.iter().map(|b| b.ip).collect();
        knows(&client, &ips);
        for b in &backends {
            knows(&b.ns, &[client_ip]);
        }
        LbWorld {
            root,
            switch,
            client,
            client_ip,
            backends,
            _scope: scope,
        }
    }

    /// The backend addresses.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.ip).collect()
    }

    pub fn backend(&self, name: &str) -> &BackendHost {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Opens `n` TCP connections from the client to `to`, one after the other, and counts the
    /// answers by backend name (`err:<kind>` for failures).
    pub fn tcp_spread(&self, to: SocketAddrV4, n: usize) -> BTreeMap<String, usize> {
        self.client
            .run(|| {
                let mut counts = BTreeMap::new();
                for _ in 0..n {
                    let key = match tcp_ask(to) {
                        Ok(name) => name,
                        Err(e) => format!("err:{:?}", e.kind()),
                    };
                    *counts.entry(key).or_insert(0) += 1;
                }
                counts
            })
            .expect("enter client namespace")
    }

    /// Sends `n` datagrams from `n` fresh sockets (so `n` flows) to `to` and counts the answers
    /// by backend name.
    pub fn udp_spread(&self, to: SocketAddrV4, n: usize) -> BTreeMap<String, usize> {
        self.client
            .run(|| {
                let mut counts = BTreeMap::new();
                for _ in 0..n {
                    let key = match udp_ask(None, to) {
                        Ok(name) => name,
                        Err(e) => format!("err:{:?}", e.kind()),
                    };
                    *counts.entry(key).or_insert(0) += 1;
                }
                counts
            })
            .expect("enter client namespace")
    }

    /// Runs `f` on a thread inside the client namespace.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.client.run(f).expect("enter client namespace")
    }

    /// `ip`, `nft list ruleset`, conntrack of every namespace: for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for ns in std::iter::once(&self.client).chain(self.backends.iter().map(|b| &b.ns)) {
            for (prog, args) in [
                ("ip", &["-br", "addr"][..]),
                ("nft", &["list", "ruleset"][..]),
                ("conntrack", &["-L"][..]),
            ] {
                let mut cmd = std::process::Command::new(prog);
                cmd.args(args);
                if ns.enter_on_exec(&mut cmd).is_err() {
                    continue;
                }
                if let Ok(o) = cmd.output() {
                    out += &format!(
                        "== {} {prog} {args:?}\n{}{}",
                        ns.name(),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        out
    }
}

impl BackendHost {
    /// Starts the TCP name server, the UDP name server and the bulk server (threads with
    /// sockets bound inside the backend's namespace).
    fn serve(&self) {
        let (tcp, udp, bulk, idle) = self
            .ns
            .run(|| {
                (
                    TcpListener::bind(("0.0.0.0", TCP_PORT)),
                    UdpSocket::bind(("0.0.0.0", UDP_PORT)),
                    TcpListener::bind(("0.0.0.0", BULK_PORT)),
                    TcpListener::bind(("0.0.0.0", IDLE_PORT)),
                )
            })
            .expect("enter backend namespace");
        let idle = idle.expect("bind idle");
        let name = self.name.clone();
        std::thread::spawn(move || {
            for conn in idle.incoming() {
                let Ok(mut conn) = conn else { return };
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = conn.write_all(format!("{name}\n").as_bytes());
                    let mut sink = [0u8; 64];
                    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                });
            }
        });
        let (tcp, udp, bulk) = (
            tcp.expect("bind tcp"),
            udp.expect("bind udp"),
            bulk.expect("bind bulk"),
        );
        let name = self.name.clone();
        let served = self.tcp_served.clone();
        std::thread::spawn(move || {
            for conn in tcp.incoming() {
                let Ok(mut conn) = conn else { return };
                served.fetch_add(1, Ordering::Relaxed);
                let _ = conn.write_all(format!("{name}\n").as_bytes());
            }
        });
        let name = self.name.clone();
        let served = self.udp_served.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                served.fetch_add(1, Ordering::Relaxed);
                let _ = udp.send_to(name.as_bytes(), from);
            }
        });
        std::thread::spawn(move || {
            for conn in bulk.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let chunk = vec![0x5au8; 256 * 1024];
                    while conn.write_all(&chunk).is_ok() {}
                });
            }
        });
    }
}

/// One TCP connection to `to` from the calling thread's namespace: the backend's name.
pub fn tcp_ask(to: SocketAddrV4) -> io::Result<String> {
    // Long enough for two SYN retransmissions (1 s, then 2 s later): a loaded machine (a VM
    // test beside this one) can lose a SYN; an LB change that drops or rejects connections
    // shows as a reset or a refusal, not as a slow handshake.
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    match answer.trim() {
        "" => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty answer")),
        name => Ok(name.to_owned()),
    }
}

/// One UDP request to `to` from `from` (a fresh socket if `None`): the backend's name.
pub fn udp_ask(from: Option<&UdpSocket>, to: SocketAddrV4) -> io::Result<String> {
    let fresh;
    let sock = match from {
        Some(s) => s,
        None => {
            fresh = UdpSocket::bind("0.0.0.0:0")?;
            fresh.connect(to)?;
            &fresh
        }
    };
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    sock.send(b"who")?;
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Polls `check` until it returns `Some`; panics naming `what` after `deadline` (scaled by
/// `MESH_TEST_PATIENCE`).
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    mesh_lab::wait::wait_for(what, deadline, || Ok(check())).unwrap_or_else(|e| panic!("{e:#}"))
}
