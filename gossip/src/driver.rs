//! The tokio shell around [`Core`]: one udp socket and one tcp listener on the same port, a
//! background task that feeds the core what arrives and sends what it asks for, and the
//! [`Gossip`] handle the agent calls.
//!
//! # Concurrency
//! The core sits in a `std::sync::Mutex` shared by the handle, the background task and the
//! short-lived sync tasks; nobody holds it across an `.await` (every lock is taken, used and
//! dropped inside one synchronous block). Whoever changes the core calls `wake.notify_one()`
//! so the background task flushes the core's output and re-arms its timer; `Notify` keeps one
//! permit, so a wake sent while the task is busy is not lost.
//!
//! The background task runs until [`Gossip::leave`] (which does a graceful SWIM leave first)
//! or until the agent aborts the returned `JoinHandle`; dropping every handle does not stop it.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, trace, warn};

use crate::config::GossipConfig;
use crate::core::Core;
use crate::crypto::Keyring;
use crate::error::GossipError;
use crate::identity::{NodeIdentity, Peer};
use crate::io::{Liveness, Membership, Stats, Transmit, TransmitKind};
use crate::records::{Record, RecordEvent};
use crate::wire::{read_frame, write_frame};

/// At most this many anti-entropy exchanges (both directions together) run at once.
const MAX_CONCURRENT_SYNCS: usize = 4;
/// Pause after an unexpected socket error so a broken socket cannot spin the loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

struct Shared {
    core: Mutex<Core>,
    wake: Notify,
    stop: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
    local_addr: SocketAddr,
    sync_timeout: Duration,
    syncs: Arc<Semaphore>,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug in the core; keep serving rather than
        // poisoning the whole gossip plane.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_core<R>(&self, f: impl FnOnce(&mut Core, Instant) -> R) -> R {
        let out = f(&mut self.core(), Instant::now());
        self.wake.notify_one();
        out
    }
}

/// Handle to a running gossip plane. Cheap to clone.
#[derive(Clone)]
pub struct Gossip {
    shared: Arc<Shared>,
}

impl Gossip {
    /// Binds udp and tcp on `bind` (same port; port 0 picks a free one) and starts gossiping
    /// as `node_id`, advertising `advertise` (default: the bound address, which must then be
    /// a specific ip).
    pub async fn start(
        config: GossipConfig,
        node_id: &str,
        bind: SocketAddr,
        advertise: Option<SocketAddr>,
        keys: Keyring,
    ) -> Result<(Gossip, JoinHandle<()>), GossipError> {
        let (udp, tcp) = bind_pair(bind).await?;
        let local = udp.local_addr().map_err(|source| GossipError::Socket {
            op: "read local address",
            addr: bind,
            source,
        })?;
        let advertise = match advertise {
            Some(a) => a,
            None if local.ip().is_unspecified() => {
                return Err(GossipError::Config {
                    field: "advertise",
                    reason: "is needed when binding to an unspecified address",
                });
            }
            None => local,
        };
        let identity = NodeIdentity::fresh(node_id, advertise)?;
        Self::serve(config, identity, udp, tcp, keys, rand::random())
    }

    /// Starts gossiping on sockets the caller bound (udp and tcp on the same port).
    pub fn serve(
        config: GossipConfig,
        identity: NodeIdentity,
        udp: UdpSocket,
        tcp: TcpListener,
        keys: Keyring,
        seed: u64,
    ) -> Result<(Gossip, JoinHandle<()>), GossipError> {
        let local_addr = udp.local_addr().map_err(|source| GossipError::Socket {
            op: "read local address",
            addr: identity.addr,
            source,
        })?;
        let span = info_span!("gossip", node_id = %identity.node_id, addr = %identity.addr);
        let sync_timeout = config.sync_timeout();
        let core = Core::new(config, identity, keys, seed, Instant::now())?;
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            wake: Notify::new(),
            stop: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
            local_addr,
            sync_timeout,
            syncs: Arc::new(Semaphore::new(MAX_CONCURRENT_SYNCS)),
        });
        let task = tokio::spawn(run(shared.clone(), Arc::new(udp), tcp).instrument(span));
        Ok((Gossip { shared }, task))
    }

    /// The bound udp/tcp address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This node's current identity.
    pub fn identity(&self) -> NodeIdentity {
        self.shared.core().identity().clone()
    }

    /// Sets the cluster's node list. See [`Core::set_peers`].
    pub fn set_peers(&self, peers: Vec<Peer>) {
        self.shared.with_core(|c, now| c.set_peers(peers, now));
    }

    /// Replaces the keyring (newest key first).
    pub fn set_keys(&self, keys: Keyring) {
        self.shared.with_core(|c, _| c.set_keys(keys));
    }

    /// Liveness of a node.
    pub fn liveness(&self, node_id: &str) -> Liveness {
        self.shared.core().liveness(node_id)
    }

    /// Liveness of every listed node.
    pub fn membership(&self) -> Membership {
        self.shared.core().membership()
    }

    /// A watch of [`Gossip::membership`].
    pub fn watch_membership(&self) -> watch::Receiver<Membership> {
        self.shared.core().watch_membership()
    }

    /// Joins a scope. See [`Core::join_scope`].
    pub fn join_scope(&self, scope: &str) -> Result<(), GossipError> {
        self.shared.with_core(|c, now| c.join_scope(scope, now))
    }

    /// Leaves a scope. See [`Core::leave_scope`].
    pub fn leave_scope(&self, scope: &str) -> Result<(), GossipError> {
        self.shared.with_core(|c, now| c.leave_scope(scope, now))
    }

    /// Creates or replaces an own record. See [`Core::upsert_local`].
    pub fn upsert_local(&self, scope: &str, key: &str, value: Vec<u8>) -> Result<(), GossipError> {
        self.shared
            .with_core(|c, now| c.upsert_local(scope, key, value, now))
    }

    /// Deletes an own record. See [`Core::delete_local`].
    pub fn delete_local(&self, scope: &str, key: &str) -> Result<(), GossipError> {
        self.shared
            .with_core(|c, now| c.delete_local(scope, key, now))
    }

    /// Whether the scope's records were exchanged in full since joining it. See
    /// [`Core::scope_synced`].
    pub fn scope_synced(&self, scope: &str) -> bool {
        self.shared.core().scope_synced(scope)
    }

    /// Live records of a joined scope.
    pub fn records(&self, scope: &str) -> Vec<Record> {
        self.shared.core().records(scope)
    }

    /// Live nodes known to have joined `scope` (this node included if it did).
    pub fn scope_members(&self, scope: &str) -> Vec<String> {
        self.shared.core().scope_members(scope)
    }

    /// Changes to the live records of the joined scopes. See [`Core::subscribe`].
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<RecordEvent> {
        self.shared.core().subscribe()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.shared.core().stats()
    }

    /// Leaves the cluster gracefully (peers learn at once) and stops the background task;
    /// returns when it has stopped.
    pub async fn leave(&self) {
        self.shared.stop.send_replace(true);
        let mut stopped = self.shared.stopped.subscribe();
        // Err only if the sender is gone, which cannot happen while `shared` lives.
        let _ = stopped.wait_for(|s| *s).await;
    }
}

/// Binds udp on `bind`, then tcp on the same ip and port. With port 0 the kernel picks the udp
/// port and the tcp port may be taken: retry with a new pick a few times.
async fn bind_pair(bind: SocketAddr) -> Result<(UdpSocket, TcpListener), GossipError> {
    let attempts = if bind.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(bind)
            .await
            .map_err(|source| GossipError::Socket {
                op: "bind udp",
                addr: bind,
                source,
            })?;
        let port = udp
            .local_addr()
            .map_err(|source| GossipError::Socket {
                op: "read local address",
                addr: bind,
                source,
            })?
            .port();
        let tcp_addr = SocketAddr::new(bind.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(GossipError::Socket {
                    op: "bind tcp",
                    addr: tcp_addr,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(GossipError::Config {
        field: "bind",
        reason: "could not bind udp and tcp on one port",
    }))
}

async fn run(shared: Arc<Shared>, udp: Arc<UdpSocket>, tcp: TcpListener) {
    info!(addr = %shared.local_addr, "gossip started");
    let mut stop = shared.stop.subscribe();
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = flush(&shared, &udp).await;
        // No timer pending never happens (the core always has periodic timers); an hour is
        // just a bound.
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = stop_requested(&mut stop) => break,
            _ = tokio::time::sleep_until(deadline) => {
                shared.core().handle_timeout(Instant::now());
            }
            received = udp.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    trace!(%from, len, "datagram in");
                    shared.core().handle_datagram(from, &buf[..len], Instant::now());
                }
                // An ICMP port unreachable for an earlier send: the peer is down, SWIM will
                // notice; nothing to do here.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    warn!(error = %e, "gossip udp receive");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
            accepted = tcp.accept() => match accepted {
                Ok((stream, from)) => match shared.syncs.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            serve_sync(&shared, stream, from).await;
                            drop(permit);
                        }.in_current_span());
                    }
                    Err(_) => debug!(%from, "too many syncs running, refusing one"),
                },
                Err(e) => {
                    warn!(error = %e, "gossip tcp accept");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
            _ = shared.wake.notified() => {}
        }
    }
    shared.core().leave(Instant::now());
    flush(&shared, &udp).await;
    info!("gossip stopped");
    shared.stopped.send_replace(true);
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // Err only if the sender is gone, which cannot happen while `Shared` lives.
    let _ = stop.wait_for(|s| *s).await;
}

/// Sends everything the core has queued; returns when the core wants its next timeout.
async fn flush(shared: &Arc<Shared>, udp: &UdpSocket) -> Option<Instant> {
    let (transmits, deadline) = {
        let mut core = shared.core();
        let mut out: Vec<Transmit> = Vec::new();
        while let Some(t) = core.poll_transmit() {
            out.push(t);
        }
        (out, core.poll_timeout())
    };
    for t in transmits {
        match t.kind {
            TransmitKind::Swim | TransmitKind::Records => match udp.send_to(&t.data, t.to).await {
                Ok(_) => trace!(to = %t.to, kind = ?t.kind, len = t.data.len(), "datagram out"),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => debug!(to = %t.to, error = %e, "gossip udp send"),
            },
            TransmitKind::SyncRequest => match shared.syncs.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = shared.clone();
                    tokio::spawn(
                        async move {
                            sync_with(&shared, t.to, t.data).await;
                            drop(permit);
                        }
                        .in_current_span(),
                    );
                }
                Err(_) => shared.core().sync_failed(t.to),
            },
        }
    }
    deadline
}

/// The asking side of an anti-entropy exchange.
async fn sync_with(shared: &Shared, to: SocketAddr, frame: Vec<u8>) {
    let exchange = async {
        let mut stream = TcpStream::connect(to).await?;
        write_frame(&mut stream, &frame).await?;
        read_frame(&mut stream).await
    };
    match tokio::time::timeout(shared.sync_timeout, exchange).await {
        Ok(Ok(reply)) => shared.with_core(|c, now| c.handle_sync_reply(to, &reply, now)),
        Ok(Err(e)) => {
            debug!(%to, error = %e, "sync exchange");
            shared.core().sync_failed(to);
        }
        Err(_elapsed) => {
            debug!(%to, timeout = ?shared.sync_timeout, "sync exchange timed out");
            shared.core().sync_failed(to);
        }
    }
}

/// The answering side of an anti-entropy exchange.
async fn serve_sync(shared: &Shared, mut stream: TcpStream, from: SocketAddr) {
    let exchange = async {
        let request = read_frame(&mut stream).await?;
        let reply = shared.with_core(|c, now| c.handle_sync_request(from, &request, now));
        if let Some(reply) = reply {
            write_frame(&mut stream, &reply).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(shared.sync_timeout, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%from, error = %e, "serving sync"),
        Err(_elapsed) => debug!(%from, "serving sync timed out"),
    }
}
