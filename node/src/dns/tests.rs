//! The servers in real network namespaces: clients query 127.0.0.11 from sockets created
//! inside the task's namespace; the upstream is a small hickory server in another namespace,
//! reachable from the task's namespace over a veth only. Needs root (to create namespaces).
//! Every wait is bounded by a timeout; nothing sleeps.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::DnsMultiplexer;
use hickory_server::net::runtime::{RuntimeProvider, Spawn, Time};
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::xfer::{DnsExchange, DnsHandle, FirstAnswer};
use hickory_server::proto::op::{
    DnsRequest, DnsRequestOptions, Edns, Message, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use mesh_dataplane::link::{self, IfName, Ipv4Cidr};
use mesh_dataplane::netns::{Netns, TempNetns};
use mesh_lab::wait::wait_for_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use super::sockets::{NetnsRuntime, NetnsSockets};
use super::*;

/// Bound on any single exchange with a server that should answer.
const PATIENCE: Duration = Duration::from_secs(5);
/// The upstream's address, on the veth between the task's and the upstream's namespaces.
const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 1);
const TASK_VETH_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 2);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime")
}

fn lo_up(ns: &Netns) {
    let lo = IfName::new("lo").unwrap();
    link::in_netns(ns, async |nl| nl.set_up(&lo).await).expect("lo up");
}

/// A task namespace, `lo` up as the worker leaves it.
fn task_ns(tag: &str) -> TempNetns {
    let ns = TempNetns::new(tag).expect("create namespace (root needed)");
    lo_up(&ns);
    ns
}

fn path(ns: &Netns) -> std::path::PathBuf {
    Netns::path_of(ns.name())
}

fn nets(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

/// `frontend`: web (vip .100, alias www, tasks .2 .3), db (dnsrr, tasks .4 .5 .6).
/// `backend`: secret (vip .200, task .8).
fn fill(table: &SharedTable) {
    let task = |id: &str, name: &str, last| TaskEntry {
        id: id.into(),
        name: name.into(),
        ip: ip(last),
    };
    table.update(|t| {
        t.set_network(
            "frontend",
            vec![
                ServiceEntry {
                    info: ServiceInfo {
                        id: "s-web".into(),
                        name: "web".into(),
                        aliases: vec!["www".into()],
                        mode: EndpointMode::Vip(ip(100)),
                    },
                    tasks: vec![task("t-web1", "web.1", 2), task("t-web2", "web.2", 3)],
                },
                ServiceEntry {
                    info: ServiceInfo {
                        id: "s-db".into(),
                        name: "db".into(),
                        aliases: vec![],
                        mode: EndpointMode::Dnsrr,
                    },
                    tasks: vec![
                        task("t-db1", "db.1", 4),
                        task("t-db2", "db.2", 5),
                        task("t-db3", "db.3", 6),
                    ],
                },
            ],
        );
        t.set_network(
            "backend",
            vec![ServiceEntry {
                info: ServiceInfo {
                    id: "s-secret".into(),
                    name: "secret".into(),
                    aliases: vec![],
                    mode: EndpointMode::Vip(ip(200)),
                },
                tasks: vec![task("t-secret1", "secret.1", 8)],
            }],
        );
    });
}

fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> (u16, Vec<u8>) {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.metadata.recursion_desired = true;
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    (m.metadata.id, m.to_vec().unwrap())
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.sort();
    v
}

/// A DNS client inside a namespace.
#[derive(Clone)]
struct Client {
    ns: Arc<Netns>,
    sockets: NetnsSockets,
}

impl Client {
    fn new(ns: &Netns) -> Self {
        Self {
            ns: Arc::new(ns.try_clone().unwrap()),
            sockets: NetnsSockets::new(),
        }
    }

    /// Sends `bytes` to 127.0.0.11:53 from a fresh socket; the first datagram back, if one
    /// comes within `wait`.
    async fn udp_raw(&self, bytes: &[u8], wait: Duration) -> io::Result<Option<Vec<u8>>> {
        let socket = self
            .sockets
            .bind_udp(&self.ns, "127.0.0.1:0".parse().unwrap())
            .await?;
        socket.connect(DNS_ADDR).await?;
        socket.send(bytes).await?;
        let mut buf = vec![0; 65535];
        match timeout(wait, socket.recv(&mut buf)).await {
            Ok(n) => Ok(Some(buf[..n?].to_vec())),
            Err(_) => Ok(None),
        }
    }

    async fn udp_edns(&self, name: &str, qtype: RecordType, edns: bool) -> Message {
        let (id, bytes) = query_bytes(name, qtype, edns);
        let reply = self
            .udp_raw(&bytes, PATIENCE)
            .await
            .expect("udp exchange")
            .unwrap_or_else(|| panic!("no udp answer for {name} {qtype}"));
        let m = Message::from_vec(&reply).expect("a parsable answer");
        assert_eq!(m.metadata.id, id, "answer id");
        m
    }

    async fn udp(&self, name: &str, qtype: RecordType) -> Message {
        self.udp_edns(name, qtype, false).await
    }

    /// Length-prefixed `bytes` over one TCP connection; the reply.
    async fn tcp_raw(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let socket = self.sockets.tcp_socket(&self.ns, DNS_ADDR).await?;
        let mut stream = socket.connect(DNS_ADDR).await?;
        stream.write_u16(bytes.len() as u16).await?;
        stream.write_all(bytes).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0; len as usize];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    }

    async fn tcp(&self, name: &str, qtype: RecordType) -> Message {
        let (id, bytes) = query_bytes(name, qtype, false);
        let reply = timeout(PATIENCE, self.tcp_raw(&bytes))
            .await
            .expect("tcp answer in time")
            .expect("tcp exchange");
        let m = Message::from_vec(&reply).expect("a parsable answer");
        assert_eq!(m.metadata.id, id);
        m
    }

    /// The same over TCP with hickory's own client (multiplexer and exchange), on sockets
    /// of the namespace.
    async fn hickory_tcp(&self, name: &str, qtype: RecordType) -> Message {
        let runtime = NetnsRuntime::new(self.ns.clone(), self.sockets.clone());
        let (connect, sender) =
            TcpClientStream::new(DNS_ADDR, None, Some(PATIENCE), runtime.clone());
        let stream = timeout(PATIENCE, connect)
            .await
            .expect("connect in time")
            .expect("connect");
        let multiplexer = DnsMultiplexer::new(stream, sender).with_timeout(PATIENCE);
        let (exchange, background) = DnsExchange::<NetnsRuntime>::from_stream(multiplexer);
        runtime.create_handle().spawn_bg(background);
        let mut request = DnsRequest::new(Message::query(), DnsRequestOptions::default());
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let response = exchange
            .send(request)
            .first_answer()
            .await
            .expect("hickory tcp query");
        response.into_message()
    }
}

/// What the fake upstream resolver knows.
struct FakeUpstream {
    asked: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for FakeUpstream {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let name = match request.request_info() {
            Ok(info) => info.query.original().name().clone(),
            Err(_) => Name::root(),
        };
        let a = |last: u8, base: [u8; 3]| {
            Record::from_rdata(
                name.clone(),
                300,
                RData::A(A(Ipv4Addr::new(base[0], base[1], base[2], last))),
            )
        };
        let answers: Vec<Record> = match name.to_lowercase().to_string().as_str() {
            "example.test." => vec![a(10, [192, 0, 2])],
            // 60 records: more than 512 bytes, so truncated over UDP without EDNS
            "big.test." => (1..=60).map(|i| a(i, [198, 51, 100])).collect(),
            "missing.test." => {
                metadata.response_code = ResponseCode::NXDomain;
                vec![]
            }
            "fail.test." => {
                metadata.response_code = ResponseCode::ServFail;
                vec![]
            }
            "slow.test." => std::future::pending().await,
            _ => {
                metadata.response_code = ResponseCode::Refused;
                vec![]
            }
        };
        let response = builder.build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        );
        response_handle
            .send_response(response)
            .await
            .expect("fake upstream answers")
    }
}

/// A task namespace wired by a veth to an upstream namespace running [`FakeUpstream`] on
/// 10.253.0.1:53. The upstream is unreachable from the test's own namespace.
struct Lab {
    task: TempNetns,
    upstream: TempNetns,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let task = task_ns(tag);
        let upstream = TempNetns::new(&format!("{tag}-up")).unwrap();
        let (t, u) = (IfName::new("dnst0").unwrap(), IfName::new("dnsu0").unwrap());
        link::in_netns(&task, async |nl| {
            nl.ensure_veth_pair(&t, &task, &u, &upstream).await?;
            nl.ensure_address(&t, Ipv4Cidr::new(TASK_VETH_IP, 24)?)
                .await?;
            nl.set_up(&t).await
        })
        .expect("task end of the veth");
        link::in_netns(&upstream, async |nl| {
            nl.ensure_address(&u, Ipv4Cidr::new(UPSTREAM_IP, 24)?)
                .await?;
            nl.set_up(&u).await?;
            nl.set_up(&IfName::new("lo")?).await
        })
        .expect("upstream end of the veth");
        Self { task, upstream }
    }

    /// Starts the fake upstream on the current runtime; returns its query counter and the
    /// server (dropping it stops the upstream).
    async fn serve_upstream(&self) -> (Arc<AtomicUsize>, Server<FakeUpstream>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let ns = Arc::new(self.upstream.try_clone().unwrap());
        let sockets = NetnsSockets::new();
        let addr = SocketAddr::from((UPSTREAM_IP, 53));
        let udp = sockets.bind_udp(&ns, addr).await.expect("upstream udp");
        let tcp = sockets.listen_tcp(&ns, addr).await.expect("upstream tcp");
        let mut server = Server::new(FakeUpstream {
            asked: asked.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, PATIENCE, 8);
        (asked, server)
    }
}

fn upstream_config() -> DnsConfig {
    DnsConfig::with_upstreams(vec![SocketAddr::from((UPSTREAM_IP, 53))])
}

#[test]
fn serves_mesh_names_over_udp_and_tcp() {
    let ns = task_ns("dns-udp-tcp");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .expect("attach");
        let client = Client::new(&ns);

        let m = client.udp("web", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), [ip(100)]);
        assert!(m.metadata.authoritative);
        assert!(m.answers.iter().all(|r| r.ttl == MESH_TTL), "ttl: {m}");
        // case and trailing dot as asked
        assert_eq!(
            a_records(&client.udp("WWW.", RecordType::A).await),
            [ip(100)]
        );
        assert_eq!(
            a_records(&client.udp("web.2", RecordType::A).await),
            [ip(3)]
        );
        assert_eq!(
            a_records(&client.udp("t-db1", RecordType::A).await),
            [ip(4)]
        );

        let m = client.tcp("web.1", RecordType::A).await;
        assert_eq!(a_records(&m), [ip(2)]);
        let m = client.hickory_tcp("tasks.web", RecordType::A).await;
        assert_eq!(sorted(a_records(&m)), [ip(2), ip(3)]);

        // a known name has no IPv6: empty NOERROR
        let m = client.udp("web", RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // EDNS in, EDNS out
        let m = client.udp_edns("web", RecordType::A, true).await;
        assert!(m.edns.is_some(), "edns answered: {m}");
        dns.shutdown().await;
    });
}

/// The SOA of a negative answer, checked to be the mesh's: in the authority section, with
/// the negative-cache TTL as its minimum and its own TTL.
fn negative_soa(m: &Message) -> &SOA {
    assert!(m.answers.is_empty(), "no answer records: {m}");
    let [record] = m.authorities.as_slice() else {
        panic!("one SOA in the authority section: {m}");
    };
    let RData::SOA(soa) = &record.data else {
        panic!("an SOA, not {record}");
    };
    assert_eq!(record.name, Name::root(), "{record}");
    assert_eq!(record.ttl, NEGATIVE_TTL, "{record}");
    assert_eq!(soa.minimum, NEGATIVE_TTL, "{record}");
    soa
}

#[test]
fn mesh_answers_carry_a_short_ttl_that_is_not_zero() {
    let ns = task_ns("dns-ttl");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .expect("attach");
        let client = Client::new(&ns);
        for (name, count) in [("web", 1), ("tasks.db", 3), ("db", 3), ("web.2", 1)] {
            for m in [
                client.udp(name, RecordType::A).await,
                client.tcp(name, RecordType::A).await,
            ] {
                assert_eq!(m.answers.len(), count, "{name}: {m}");
                let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
                assert_eq!(ttls, vec![5; count], "{name}: {m}");
            }
        }
        assert_eq!(MESH_TTL, 5);
        dns.shutdown().await;
    });
}

#[test]
fn negative_answers_carry_an_soa_so_resolvers_cache_them() {
    let ns = task_ns("dns-soa");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        // a service with no task right now
        dns.table().update(|t| {
            t.upsert_service(
                "frontend",
                ServiceInfo {
                    id: "s-idle".into(),
                    name: "idle".into(),
                    aliases: vec![],
                    mode: EndpointMode::Dnsrr,
                },
            )
        });
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .expect("attach");
        let client = Client::new(&ns);
        // NODATA: a name that exists, asked for a type it has no record of, or with no task
        for (name, qtype) in [
            ("web", RecordType::AAAA),
            ("web.1", RecordType::MX),
            ("idle", RecordType::A),
        ] {
            for m in [client.udp(name, qtype).await, client.tcp(name, qtype).await] {
                assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m}");
                assert!(m.metadata.authoritative, "{m}");
                negative_soa(&m);
            }
        }
        // NXDOMAIN of a name on another network
        for m in [
            client.udp("secret", RecordType::A).await,
            client.tcp("tasks.secret", RecordType::AAAA).await,
        ] {
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m}");
            assert!(m.metadata.authoritative, "{m}");
            negative_soa(&m);
        }
        // with EDNS too; positive answers have no authority section
        let m = client.udp_edns("secret", RecordType::A, true).await;
        negative_soa(&m);
        let m = client.udp("web", RecordType::A).await;
        assert!(m.authorities.is_empty(), "{m}");
        dns.shutdown().await;
    });
}

#[test]
fn cluster_names_the_task_may_not_see_are_nxdomain_and_never_asked_upstream() {
    let lab = Lab::new("dns-hidden");
    runtime().block_on(async {
        let (asked, _upstream) = lab.serve_upstream().await;
        let dns = DnsManager::new(upstream_config());
        fill(&dns.table());
        // `hidden` (alias `h`) runs only on networks this node has no task on: no network of
        // the table holds it, only the managers' list of the cluster's names does.
        dns.table().update(|t| {
            t.set_cluster(
                ["web", "www", "db", "secret", "hidden", "h"],
                ["aaaaaaaaaaaaaaaaaaaaaaaaa"],
            )
        });
        dns.attach("t1", &path(&lab.task), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&lab.task);
        for name in [
            "hidden",
            "h",
            "tasks.hidden",
            "hidden.2",
            "hidden.aaaaaaaaaaaaaaaaaaaaaaaaa",
            "web.7",
            "secret",
        ] {
            let m = client.udp(name, RecordType::A).await;
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}: {m}"
            );
            negative_soa(&m);
            let m = client.tcp(name, RecordType::AAAA).await;
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}: {m}"
            );
        }
        assert_eq!(asked.load(Ordering::SeqCst), 0, "the upstream was asked");
        // the upstream is there, and names unknown to the cluster go to it
        let m = client.udp("example.test", RecordType::A).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)], "{m}");
        let m = client.udp("hidden.example.test", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m}");
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        dns.shutdown().await;
    });
}

#[test]
fn tasks_names_list_every_task_and_dnsrr_order_varies() {
    let ns = task_ns("dns-rr");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&ns);
        let all = [ip(4), ip(5), ip(6)];
        assert_eq!(
            sorted(a_records(&client.udp("tasks.db", RecordType::A).await)),
            all
        );
        let first = a_records(&client.udp("db", RecordType::A).await);
        assert_eq!(sorted(first.clone()), all);
        // 3 addresses: 30 identical orders in a row has odds 6^-29
        let mut varied = false;
        for _ in 0..30 {
            let next = a_records(&client.udp("db", RecordType::A).await);
            assert_eq!(sorted(next.clone()), all);
            if next != first {
                varied = true;
                break;
            }
        }
        assert!(varied, "dnsrr answers always in order {first:?}");
        dns.shutdown().await;
    });
}

#[test]
fn names_of_other_networks_are_nxdomain_and_networks_can_change() {
    let ns = task_ns("dns-iso");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&ns);
        for name in ["secret", "secret.1", "tasks.secret"] {
            let m = client.udp(name, RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.answers.is_empty());
        }
        // attaching again only changes the networks
        dns.attach("t1", &path(&ns), nets(&["frontend", "backend"]))
            .await
            .unwrap();
        assert_eq!(dns.attached().await, ["t1"]);
        assert_eq!(
            a_records(&client.udp("secret", RecordType::A).await),
            [ip(200)]
        );
        // a table change is seen by the next query
        dns.table().update(|t| t.remove_network("backend"));
        let m = client.udp("secret", RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "not ours any more, no upstream"
        );
        dns.shutdown().await;
    });
}

#[test]
fn each_task_namespace_has_its_own_server() {
    let (a, b) = (task_ns("dns-two-a"), task_ns("dns-two-b"));
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("a", &path(&a), nets(&["frontend"]))
            .await
            .unwrap();
        dns.attach("b", &path(&b), nets(&["backend"]))
            .await
            .unwrap();
        let (ca, cb) = (Client::new(&a), Client::new(&b));
        assert_eq!(a_records(&ca.udp("web", RecordType::A).await), [ip(100)]);
        let m = cb.udp("web", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(a_records(&cb.udp("secret", RecordType::A).await), [ip(200)]);
        dns.detach("a").await;
        assert_eq!(a_records(&cb.udp("secret", RecordType::A).await), [ip(200)]);
        dns.shutdown().await;
    });
}

#[test]
fn detach_stops_answering_and_frees_the_address() {
    let ns = task_ns("dns-detach");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&ns);
        assert_eq!(
            a_records(&client.udp("web", RecordType::A).await),
            [ip(100)]
        );
        dns.detach("t1").await;
        dns.detach("t1").await; // absent is fine
        assert!(dns.attached().await.is_empty());

        // loopback reports the closed port at once: connection refused, over UDP and TCP
        let (_, bytes) = query_bytes("web", RecordType::A, false);
        let udp = client.udp_raw(&bytes, PATIENCE).await;
        assert_eq!(
            udp.as_ref().map_err(io::Error::kind).err(),
            Some(io::ErrorKind::ConnectionRefused),
            "udp after detach: {udp:?}"
        );
        let tcp = client.tcp_raw(&bytes).await;
        assert_eq!(
            tcp.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::ConnectionRefused)
        );
        // and the address is free again
        let sockets = NetnsSockets::new();
        let ns_arc = Arc::new(ns.try_clone().unwrap());
        sockets
            .bind_udp(&ns_arc, DNS_ADDR)
            .await
            .expect("udp 53 free");
        sockets
            .listen_tcp(&ns_arc, DNS_ADDR)
            .await
            .expect("tcp 53 free");
    });
}

/// Handles of this process on the namespace `id` (see [`Netns::id`]): open files, and
/// threads inside it.
fn holds_on(id: (u64, u64)) -> usize {
    use std::os::unix::fs::MetadataExt;
    let count = |dir: &str, leaf: Option<&str>| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                // follows the link to the namespace file (or socket, pipe...) itself
                let path = match leaf {
                    Some(leaf) => e.path().join(leaf),
                    None => e.path(),
                };
                std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == id)
            })
            .count()
    };
    count("/proc/self/fd", None) + count("/proc/self/task", Some("ns/net"))
}

/// Polls `cond` until it holds; panics naming `what` once `PATIENCE` (scaled by
/// `MESH_TEST_PATIENCE`) runs out.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for_async(what, PATIENCE, async || Ok(cond()))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn detach_releases_the_namespace() {
    let lab = Lab::new("dns-release");
    let id = lab.task.id().unwrap();
    // the lab's own handle
    let before = holds_on(id);
    runtime().block_on(async {
        let (_asked, _upstream) = lab.serve_upstream().await;
        let dns = DnsManager::new(upstream_config());
        fill(&dns.table());
        dns.attach("t1", &path(&lab.task), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&lab.task);
        client.udp("web", RecordType::A).await;
        client.udp("example.test", RecordType::A).await;
        client.tcp("big.test", RecordType::A).await;
        drop(client);
        assert!(
            holds_on(id) > before,
            "the server holds the namespace while attached"
        );
        dns.detach("t1").await;
        // forwarding tasks wind down on their own, right after
        eventually("the namespace released", || holds_on(id) == before).await;
    });
}

#[test]
fn attach_to_a_new_namespace_moves_the_server() {
    let (old, new) = (task_ns("dns-move-a"), task_ns("dns-move-b"));
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&old), nets(&["frontend"]))
            .await
            .unwrap();
        dns.attach("t1", &path(&new), nets(&["frontend"]))
            .await
            .unwrap();
        assert_eq!(dns.attached().await, ["t1"]);
        let m = Client::new(&new).udp("web", RecordType::A).await;
        assert_eq!(a_records(&m), [ip(100)]);
        let (_, bytes) = query_bytes("web", RecordType::A, false);
        let stale = Client::new(&old).udp_raw(&bytes, PATIENCE).await;
        assert_eq!(
            stale.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::ConnectionRefused)
        );
        dns.shutdown().await;
    });
}

/// An agent restart gives the task's resolver new ports. A client that keeps one socket (a
/// long-lived resolver) must reach the new server: its conntrack entry, which still maps it
/// to the old port, is not left to keep it refused for as long as it keeps asking.
#[test]
fn a_client_keeping_its_socket_reaches_the_server_of_a_restarted_agent() {
    let ns = task_ns("dns-restart");
    runtime().block_on(async {
        let client = Client::new(&ns);
        let socket = client
            .sockets
            .bind_udp(&client.ns, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        socket.connect(DNS_ADDR).await.unwrap();
        let ask = async || {
            let (id, bytes) = query_bytes("web", RecordType::A, false);
            socket.send(&bytes).await?;
            let mut buf = vec![0; 4096];
            let n = timeout(PATIENCE, socket.recv(&mut buf))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            let m = Message::from_vec(&buf[..n]).expect("a parsable answer");
            assert_eq!(m.metadata.id, id, "answer id");
            Ok::<_, io::Error>(a_records(&m))
        };
        for _ in 0..2 {
            let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
            fill(&dns.table());
            dns.attach("t1", &path(&ns), nets(&["frontend"]))
                .await
                .unwrap();
            assert_eq!(
                ask().await.expect("an answer on the same socket"),
                [ip(100)]
            );
            dns.shutdown().await;
        }
    });
}

#[test]
fn attach_brings_lo_up_when_it_is_down() {
    let ns = TempNetns::new("dns-lo-down").unwrap();
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .expect("attach");
        assert_eq!(
            a_records(&Client::new(&ns).udp("web", RecordType::A).await),
            [ip(100)]
        );
        dns.shutdown().await;
    });
}

#[test]
fn attach_to_a_missing_namespace_names_it() {
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        let err = dns
            .attach("t9", "/run/netns/does-not-exist-dns".as_ref(), vec![])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("open network namespace /run/netns/does-not-exist-dns of task t9"),
            "{err}"
        );
        assert!(dns.attached().await.is_empty());
    });
}

#[test]
fn other_names_are_relayed_from_the_upstream() {
    let lab = Lab::new("dns-fwd");
    runtime().block_on(async {
        let (asked, _upstream) = lab.serve_upstream().await;
        let dns = DnsManager::new(upstream_config());
        fill(&dns.table());
        dns.attach("t1", &path(&lab.task), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&lab.task);

        let m = client.udp("example.test", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m}");
        assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);
        assert_eq!(m.answers[0].ttl, 300, "upstream ttl kept");
        assert!(m.metadata.recursion_available);
        assert_eq!(asked.load(Ordering::SeqCst), 1);

        let m = client.tcp("Example.Test.", RecordType::A).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)]);

        let m = client.udp("missing.test", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        // upstream SERVFAIL with no other upstream: relayed
        let m = client.udp("fail.test", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

        // mesh names never reach the upstream; nor do names of other networks
        let before = asked.load(Ordering::SeqCst);
        client.udp("web", RecordType::A).await;
        client.udp("secret", RecordType::A).await;
        assert_eq!(asked.load(Ordering::SeqCst), before);
        dns.shutdown().await;
    });
}

/// `mesh_dns_queries_total{result}` and the latency count of `result`, from a scrape.
fn dns_counts(metrics: &mesh_common::metrics::Metrics, result: &str) -> (f64, f64) {
    let text = metrics.encode();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses");
    let of = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("result") == Some(result))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v) => *v,
                prometheus_parse::Value::Histogram(b) => {
                    b.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                other => panic!("{name}: unexpected {other:?}"),
            })
            .unwrap_or(0.0)
    };
    (
        of("mesh_dns_queries_total"),
        of("mesh_dns_query_duration_seconds"),
    )
}

#[test]
fn answers_are_counted_and_timed_by_result() {
    let lab = Lab::new("dns-metrics");
    runtime().block_on(async {
        let (_asked, _upstream) = lab.serve_upstream().await;
        let metrics = mesh_common::metrics::Metrics::new();
        let dns = DnsManager::with_metrics(upstream_config(), metrics.dns.clone());
        fill(&dns.table());
        dns.attach("t1", &path(&lab.task), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&lab.task);
        client.udp("web", RecordType::A).await;
        client.tcp("web.1", RecordType::A).await;
        client.udp("secret", RecordType::A).await;
        client.udp("example.test", RecordType::A).await;
        assert_eq!(dns_counts(&metrics, "noerror"), (2.0, 2.0));
        assert_eq!(dns_counts(&metrics, "nxdomain"), (1.0, 1.0));
        assert_eq!(dns_counts(&metrics, "forwarded"), (1.0, 1.0));
        assert_eq!(dns_counts(&metrics, "servfail"), (0.0, 0.0));
        dns.shutdown().await;

        // No upstream at all: a name outside the cluster cannot be answered.
        let dns = DnsManager::with_metrics(DnsConfig::with_upstreams(vec![]), metrics.dns.clone());
        dns.attach("t1", &path(&lab.task), vec![]).await.unwrap();
        client.udp("example.com", RecordType::A).await;
        assert_eq!(dns_counts(&metrics, "servfail"), (1.0, 1.0));
        dns.shutdown().await;
    });
}

#[test]
fn truncated_answers_are_fetched_over_tcp_and_retruncated_for_small_udp_clients() {
    let lab = Lab::new("dns-big");
    runtime().block_on(async {
        let (_asked, _upstream) = lab.serve_upstream().await;
        let dns = DnsManager::new(upstream_config());
        dns.attach("t1", &path(&lab.task), vec![]).await.unwrap();
        let client = Client::new(&lab.task);
        // over TCP the client gets all 60 (the forwarder got a truncated UDP answer first)
        let m = client.tcp("big.test", RecordType::A).await;
        assert_eq!(a_records(&m).len(), 60, "{m}");
        assert!(!m.metadata.truncation);
        // a UDP client without EDNS gets what fits in 512 bytes, flagged truncated
        let m = client.udp("big.test", RecordType::A).await;
        assert!(m.metadata.truncation, "TC set");
        assert!(a_records(&m).len() < 60);
        // with a 1232-byte EDNS buffer it all fits
        let m = client.udp_edns("big.test", RecordType::A, true).await;
        assert_eq!(a_records(&m).len(), 60);
        dns.shutdown().await;
    });
}

#[test]
fn a_big_dnsrr_service_is_truncated_over_udp_and_whole_over_tcp() {
    let ns = task_ns("dns-big-rr");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        dns.table().update(|t| {
            t.upsert_service(
                "n",
                ServiceInfo {
                    id: "s".into(),
                    name: "many".into(),
                    aliases: vec![],
                    mode: EndpointMode::Dnsrr,
                },
            );
            for i in 1..=100u8 {
                t.upsert_task(
                    "n",
                    "s",
                    TaskEntry {
                        id: format!("t{i}"),
                        name: format!("many.{i}"),
                        ip: Ipv4Addr::new(10, 9, 0, i),
                    },
                );
            }
        });
        dns.attach("t1", &path(&ns), nets(&["n"])).await.unwrap();
        let client = Client::new(&ns);
        let m = client.udp("many", RecordType::A).await;
        assert!(m.metadata.truncation);
        assert!(!a_records(&m).is_empty() && a_records(&m).len() < 100);
        let m = client.tcp("many", RecordType::A).await;
        assert_eq!(a_records(&m).len(), 100);
        dns.shutdown().await;
    });
}

#[test]
fn no_upstream_is_servfail_at_once() {
    let ns = task_ns("dns-noup");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        dns.attach("t1", &path(&ns), vec![]).await.unwrap();
        let client = Client::new(&ns);
        let start = Instant::now();
        let m = client.udp("example.com", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        dns.shutdown().await;
    });
}

#[test]
fn unreachable_or_silent_upstreams_are_servfail_within_the_deadline() {
    let lab = Lab::new("dns-dead");
    runtime().block_on(async {
        let (asked, _upstream) = lab.serve_upstream().await;
        let mut config = DnsConfig::with_upstreams(vec![
            // no route from the task's namespace: fails at once
            "203.0.113.1:53".parse().unwrap(),
            // on the link but nobody there: silence
            "10.253.0.99:53".parse().unwrap(),
            SocketAddr::from((UPSTREAM_IP, 53)),
        ]);
        config.upstream_timeout = Duration::from_millis(300);
        config.forward_deadline = Duration::from_millis(1500);
        let dns = DnsManager::new(config);
        dns.attach("t1", &path(&lab.task), vec![]).await.unwrap();
        let client = Client::new(&lab.task);

        // the dead ones are skipped, the third answers
        let m = client.udp("example.test", RecordType::A).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 10)], "{m}");

        // an upstream that never answers: SERVFAIL once the deadline is spent
        let start = Instant::now();
        let m = client.udp("slow.test", RecordType::A).await;
        let took = start.elapsed();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(took < Duration::from_secs(3), "servfail after {took:?}");
        assert!(asked.load(Ordering::SeqCst) >= 2);
        dns.shutdown().await;
    });
}

#[test]
fn two_hundred_concurrent_queries_are_all_answered() {
    let lab = Lab::new("dns-200");
    runtime().block_on(async {
        let (_asked, _upstream) = lab.serve_upstream().await;
        let dns = DnsManager::new(upstream_config());
        fill(&dns.table());
        dns.attach("t1", &path(&lab.task), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&lab.task);
        let cases = [
            ("web", vec![ip(100)]),
            ("tasks.db", vec![ip(4), ip(5), ip(6)]),
            ("db.2", vec![ip(5)]),
            ("example.test", vec![Ipv4Addr::new(192, 0, 2, 10)]),
        ];
        let mut queries = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (name, want) = cases[i % cases.len()].clone();
            let client = client.clone();
            queries.spawn(async move {
                let m = if i % 10 == 0 {
                    client.tcp(name, RecordType::A).await
                } else {
                    client.udp(name, RecordType::A).await
                };
                assert_eq!(sorted(a_records(&m)), want, "query {i} {name}");
            });
        }
        let mut done = 0;
        while let Some(joined) = queries.join_next().await {
            joined.expect("query task");
            done += 1;
        }
        assert_eq!(done, 200);
        dns.shutdown().await;
    });
}

#[test]
fn garbage_does_not_stop_the_server() {
    let ns = task_ns("dns-garbage");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .unwrap();
        let client = Client::new(&ns);
        let short = Duration::from_millis(200);

        // a header announcing a question that is not there: FORMERR, same id
        let header_only = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let reply = client
            .udp_raw(&header_only, PATIENCE)
            .await
            .unwrap()
            .expect("formerr");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );

        // two questions: FORMERR; opcode STATUS: NOTIMP
        let mut two = Message::query();
        let q = Query::query(Name::from_ascii("web").unwrap(), RecordType::A);
        two.add_query(q.clone()).add_query(q.clone());
        let reply = client
            .udp_raw(&two.to_vec().unwrap(), PATIENCE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
        let mut status = Message::query();
        status.metadata.op_code = OpCode::Status;
        status.add_query(q);
        let reply = client
            .udp_raw(&status.to_vec().unwrap(), PATIENCE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::NotImp
        );

        // noise of every length up to 600 bytes, and a response (never answered)
        let mut noise = vec![0u8; 600];
        for len in [0, 1, 2, 11, 12, 13, 50, 512, 600] {
            rand::fill(&mut noise[..]);
            // answered or not, it must not matter
            let _ = client.udp_raw(&noise[..len], short).await.unwrap();
        }
        let response = Message::response(7, OpCode::Query).to_vec().unwrap();
        assert_eq!(client.udp_raw(&response, short).await.unwrap(), None);

        // TCP: a length prefix promising more than comes, then a hang-up; and noise
        {
            let socket = client
                .sockets
                .tcp_socket(&client.ns, DNS_ADDR)
                .await
                .unwrap();
            let mut stream = socket.connect(DNS_ADDR).await.unwrap();
            stream.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        }
        {
            let socket = client
                .sockets
                .tcp_socket(&client.ns, DNS_ADDR)
                .await
                .unwrap();
            let mut stream = socket.connect(DNS_ADDR).await.unwrap();
            rand::fill(&mut noise[..]);
            let _ = stream.write_all(&noise).await;
        }

        // still serving, both ways
        assert_eq!(
            a_records(&client.udp("web", RecordType::A).await),
            [ip(100)]
        );
        assert_eq!(
            a_records(&client.tcp("web", RecordType::A).await),
            [ip(100)]
        );
        dns.shutdown().await;
    });
}

/// The C library's stub resolver, given [`RESOLV_CONF`] as a task gets it (bind-mounted in
/// a private mount namespace), resolves mesh names and forwarded names. `getent ahosts` asks A
/// and AAAA at once over one socket, as most programs do.
#[test]
fn glibc_resolves_through_the_task_resolv_conf() {
    let lab = Lab::new("dns-glibc");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, RESOLV_CONF).unwrap();
    runtime().block_on(async {
        let (_asked, _upstream) = lab.serve_upstream().await;
        let dns = DnsManager::new(upstream_config());
        fill(&dns.table());
        dns.attach("t1", &path(&lab.task), nets(&["frontend"]))
            .await
            .unwrap();
        let script = "mount --bind \"$1\" /etc/resolv.conf && getent ahosts web \
                      && getent ahostsv4 tasks.db && getent ahostsv4 example.test";
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "sh", "-c", script, "sh"]).arg(&conf);
        lab.task.enter_on_exec(&mut cmd).unwrap();
        let out = timeout(PATIENCE * 2, tokio::process::Command::from(cmd).output())
            .await
            .expect("getent in time")
            .expect("run unshare and getent");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "10.0.1.100",
            "10.0.1.4",
            "10.0.1.5",
            "10.0.1.6",
            "192.0.2.10",
        ] {
            assert!(stdout.contains(want), "{want} missing from:\n{stdout}");
        }
        dns.shutdown().await;
    });
}

#[test]
fn resolv_conf_points_at_the_embedded_server() {
    let c = DnsConfig::from_resolv_conf(RESOLV_CONF);
    assert!(
        c.upstreams.is_empty(),
        "127.0.0.11 is loopback, never an upstream"
    );
    assert!(RESOLV_CONF.contains("nameserver 127.0.0.11\n"));
    assert!(RESOLV_CONF.contains("options ndots:0"));
}

#[test]
fn a_task_may_serve_port_53_on_the_wildcard_address_beside_its_resolver() {
    let ns = task_ns("dns-port53");
    runtime().block_on(async {
        let dns = DnsManager::new(DnsConfig::with_upstreams(vec![]));
        fill(&dns.table());
        dns.attach("t1", &path(&ns), nets(&["frontend"]))
            .await
            .expect("attach");
        // What a DNS service in the task does: bind port 53 on every address.
        let (udp, tcp) = ns
            .run(|| {
                (
                    std::net::UdpSocket::bind("0.0.0.0:53").expect("udp 0.0.0.0:53 is free"),
                    std::net::TcpListener::bind("0.0.0.0:53").expect("tcp 0.0.0.0:53 is free"),
                )
            })
            .unwrap();
        let client = Client::new(&ns);
        assert_eq!(
            a_records(&client.udp("web", RecordType::A).await),
            [ip(100)]
        );
        assert_eq!(
            a_records(&client.tcp("web", RecordType::A).await),
            [ip(100)]
        );
        drop((udp, tcp));
    });
}
