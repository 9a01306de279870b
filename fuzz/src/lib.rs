//! Fixtures the fuzz targets share: a gossip node that already hears a live peer, the
//! runtime async decoders run on, and a DNS table with a few services.

use std::net::{Ipv4Addr, SocketAddr};

use mesh_gossip::{Core, GossipConfig, Keyring, NodeIdentity, Peer, TransmitKind};
use mesh_node::dns::{EndpointMode, ServiceEntry, ServiceInfo, SharedTable, TaskEntry};
use tokio::time::Instant;

/// The one key of the fuzzed gossip cluster.
pub const GOSSIP_KEY_ID: u32 = 1;
/// The node under test.
pub const NODE_A: &str = "node-a";
/// The peer whose packets the fuzzer forges (after authentication) or whose key it lacks.
pub const NODE_B: &str = "node-b";
/// The scope both nodes joined.
pub const SCOPE: &str = "net";

pub fn keyring() -> Keyring {
    Keyring::new(vec![(GOSSIP_KEY_ID, [7u8; 32])]).expect("a valid keyring")
}

pub fn addr_a() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 7946))
}

pub fn addr_b() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 7946))
}

/// A current-thread runtime for the async decoders (one per target process).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

/// Node A, which has heard node B alive and in [`SCOPE`], so that records from B are judged
/// and merged rather than held. Built fresh for each input: nothing carries over between runs.
pub fn gossip_node() -> (Core, Instant) {
    let now = Instant::now();
    let config = GossipConfig::default();
    let core = |id: &str, addr: SocketAddr, seed| {
        let identity = NodeIdentity::new(id, addr, 1_000).expect("a valid identity");
        Core::new(config.clone(), identity, keyring(), seed, now).expect("a gossip core")
    };
    let mut a = core(NODE_A, addr_a(), 1);
    let mut b = core(NODE_B, addr_b(), 2);
    a.set_peers(
        vec![Peer {
            node_id: NODE_B.into(),
            addr: addr_b(),
        }],
        now,
    );
    b.set_peers(
        vec![Peer {
            node_id: NODE_A.into(),
            addr: addr_a(),
        }],
        now,
    );
    a.join_scope(SCOPE, now).expect("join");
    b.join_scope(SCOPE, now).expect("join");
    // Deliver everything both ways until quiet: SWIM makes each alive to the other, and the
    // membership pushes put each in the scope.
    for _ in 0..16 {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            deliver(&mut b, &mut a, addr_a(), t.kind, &t.data, now);
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            deliver(&mut a, &mut b, addr_b(), t.kind, &t.data, now);
        }
        if !moved {
            break;
        }
    }
    assert_eq!(a.stats().members_alive, 2, "node b is alive to node a");
    (a, now)
}

fn deliver(
    to: &mut Core,
    from: &mut Core,
    from_addr: SocketAddr,
    kind: TransmitKind,
    data: &[u8],
    now: Instant,
) {
    match kind {
        TransmitKind::SyncRequest => {
            let to_addr = if from_addr == addr_a() {
                addr_b()
            } else {
                addr_a()
            };
            if let Some(reply) = to.handle_sync_request(from_addr, data, now) {
                from.handle_sync_reply(to_addr, &reply, now);
            }
        }
        _ => to.handle_datagram(from_addr, data, now),
    }
}

/// Drops what a node wants to send (sealing it on the way).
pub fn drain(core: &mut Core) {
    while core.poll_transmit().is_some() {}
}

/// `frontend`: web (VIP, alias www, two tasks) and db (dnsrr, two tasks); `backend`: one
/// service the querying task is not attached to.
pub fn dns_table() -> SharedTable {
    let ip = |last| Ipv4Addr::new(10, 0, 1, last);
    let task = |id: &str, name: &str, last| TaskEntry {
        id: id.into(),
        name: name.into(),
        ip: ip(last),
    };
    let service = |id: &str, name: &str, aliases: &[&str], mode, tasks| ServiceEntry {
        info: ServiceInfo {
            id: id.into(),
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            mode,
        },
        tasks,
    };
    let table = SharedTable::new();
    table.update(|t| {
        t.set_search_domains(&["example.org".to_string()]);
        t.set_network(
            "frontend",
            vec![
                service(
                    "s-web",
                    "web",
                    &["www"],
                    EndpointMode::Vip(ip(100)),
                    vec![task("t-web1", "web.1", 2), task("t-web2", "web.2", 3)],
                ),
                service(
                    "s-db",
                    "db",
                    &[],
                    EndpointMode::Dnsrr,
                    vec![task("t-db1", "db.1", 4), task("t-db2", "db.2", 5)],
                ),
            ],
        );
        t.set_network(
            "backend",
            vec![service(
                "s-secret",
                "secret",
                &[],
                EndpointMode::Vip(ip(200)),
                vec![task("t-secret1", "secret.1", 8)],
            )],
        );
    });
    table
}
