//! Sockets inside task network namespaces, for a tokio runtime that lives outside them.
//!
//! A socket belongs forever to the network namespace of the thread that called `socket(2)`,
//! and `setns(2)` moves only the calling thread. So the agent's runtime never enters a
//! namespace: [`NetnsSockets`] owns one plain OS thread that, for each job, enters the job's
//! namespace and creates the socket there, then hands it back; the socket is registered with
//! tokio by the caller (binding, connecting and I/O work from any thread). After each job the
//! thread goes back to the namespace it started in, before the caller gets the socket: a
//! thread parked in a task's namespace would keep that namespace (and its links) alive after
//! the task is gone.
//!
//! [`NetnsRuntime`] is hickory's [`RuntimeProvider`] with sockets made that way, so hickory's
//! DNS client talks to upstream resolvers from inside the task's namespace, as the task itself
//! would.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::runtime::{RuntimeProvider, TokioHandle, TokioTime};
use mesh_dataplane::netns::Netns;
use nix::sched::CloneFlags;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tracing::warn;

/// How long a TCP connection to an upstream may take when hickory gives no limit.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Work done inside a namespace; returns the delivery of its result, run once the thread is
/// back in its own namespace.
type Job = Box<dyn FnOnce() -> Delivery + Send>;
type Delivery = Box<dyn FnOnce() + Send>;

/// Creates sockets inside network namespaces on a dedicated thread (see the module doc).
/// Cheap to clone; the thread exits when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct NetnsSockets {
    /// The job queue of the thread; replaced when the thread is found gone.
    jobs: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
}

impl NetnsSockets {
    pub(crate) fn new() -> Self {
        Self {
            jobs: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `make` on the socket thread after it entered `ns`, and returns what it made.
    pub(crate) async fn run<T, F>(&self, ns: &Arc<Netns>, make: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let ns = ns.clone();
        let job: Job = Box::new(move || {
            let made = nix::sched::setns(&*ns, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|()| make());
            Box::new(move || {
                // The caller may have given up waiting: then the socket is just closed.
                let _ = reply.send(made);
            })
        });
        self.submit(job)?;
        answer
            .await
            .map_err(|_| io::Error::other("the namespace socket thread dropped a job"))?
    }

    /// A UDP socket bound to `addr` inside `ns`.
    pub(crate) async fn bind_udp(
        &self,
        ns: &Arc<Netns>,
        addr: SocketAddr,
    ) -> io::Result<UdpSocket> {
        let socket = self
            .run(ns, move || {
                let socket = std::net::UdpSocket::bind(addr)?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .await?;
        UdpSocket::from_std(socket)
    }

    /// A TCP listener on `addr` inside `ns` (`SO_REUSEADDR`, as std sets it).
    pub(crate) async fn listen_tcp(
        &self,
        ns: &Arc<Netns>,
        addr: SocketAddr,
    ) -> io::Result<TcpListener> {
        let listener = self
            .run(ns, move || {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .await?;
        TcpListener::from_std(listener)
    }

    /// An unconnected TCP socket of the family of `peer`, inside `ns`.
    pub(crate) async fn tcp_socket(
        &self,
        ns: &Arc<Netns>,
        peer: SocketAddr,
    ) -> io::Result<TcpSocket> {
        self.run(ns, move || match peer {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        })
        .await
    }

    /// Queues `job`, starting the thread if there is none or it is gone.
    fn submit(&self, job: Job) -> io::Result<()> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let job = match jobs.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                // The thread is gone; take the job back and start another.
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("dns-netns-sockets".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                // The namespace this thread was started in: the agent's (the spawning thread is
                // a runtime worker, which never enters a namespace).
                let home = match Netns::current() {
                    Ok(home) => home,
                    Err(error) => {
                        warn!(%error, "namespace socket thread cannot open its own namespace");
                        return;
                    }
                };
                // Ends when every sender (every NetnsSockets clone) is dropped.
                while let Ok(job) = rx.recv() {
                    // A job only makes a socket; should one panic, its caller sees its reply
                    // dropped and the thread goes on serving the others.
                    let delivery = std::panic::catch_unwind(AssertUnwindSafe(job));
                    if let Err(error) = nix::sched::setns(&home, CloneFlags::CLONE_NEWNET) {
                        // Exiting releases the namespace; the next job starts a new thread.
                        warn!(%error, "namespace socket thread cannot go home: exiting");
                        return;
                    }
                    if let Ok(delivery) = delivery {
                        delivery();
                    }
                }
            })?;
        tx.send(job)
            .map_err(|_| io::Error::other("the namespace socket thread exited at start"))?;
        *jobs = Some(tx);
        Ok(())
    }
}

/// hickory's tokio runtime, except that every socket is created inside one network namespace.
#[derive(Clone)]
pub(crate) struct NetnsRuntime {
    ns: Arc<Netns>,
    sockets: NetnsSockets,
    handle: TokioHandle,
}

impl NetnsRuntime {
    pub(crate) fn new(ns: Arc<Netns>, sockets: NetnsSockets) -> Self {
        Self {
            ns,
            sockets,
            handle: TokioHandle::default(),
        }
    }
}

impl RuntimeProvider for NetnsRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = UdpSocket;
    type Tcp = AsyncIoTokioAsStd<TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.handle.clone()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Tcp>>>> {
        let this = self.clone();
        Box::pin(async move {
            let socket = this.sockets.tcp_socket(&this.ns, server_addr).await?;
            if let Some(bind_addr) = bind_addr {
                socket.bind(bind_addr)?;
            }
            socket.set_nodelay(true)?;
            let timeout = timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            match tokio::time::timeout(timeout, socket.connect(server_addr)).await {
                Ok(stream) => Ok(AsyncIoTokioAsStd(stream?)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("tcp connect to {server_addr} timed out"),
                )),
            }
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Udp>>>> {
        let this = self.clone();
        Box::pin(async move { this.sockets.bind_udp(&this.ns, local_addr).await })
    }
}
