//! What every node serves on its control port whatever its role: the `Logs` service, the
//! output of the tasks it runs, for managers answering `mesh service logs`, and the `Inspect`
//! service, its kernel state of a network for `mesh network inspect --verbose`. A manager serves
//! it beside its own services (`mesh_control::manager::Manager::serve`); a worker runs
//! [`NodePort`], a control port with only this.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_common::auth::managers_by_certificate;
use mesh_common::tls::{self, Credentials};
use mesh_proto::inspect_server::{Inspect, InspectServer};
use mesh_proto::logs_server::{Logs, LogsServer};
use mesh_proto::{LogBatch, LogRecord, NetworkStateRequest, NodeNetworkState, TaskLogsRequest};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tracing::error;

use crate::runtime::logs::{LogReader, Record};
use crate::runtime::spec::validate_task_id;
use crate::runtime::state::TaskDir;
use crate::worker::WorkerHandle;

/// How often a followed task's output is checked for new records. Polling keeps one code
/// path for appends, rotations and a task dir that disappears; a read of an unchanged file
/// costs one `read` returning 0.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Records per message.
const BATCH: usize = 256;

/// The `Logs` service over the task dirs under `tasks_dir`.
pub struct LogsService {
    tasks_dir: PathBuf,
    /// Ends followed streams, which would otherwise hold the server (and its port) open.
    stop: CancellationToken,
}

impl LogsService {
    /// The services every node serves (`Logs`, and `Inspect` over `worker`), with their
    /// interceptor (managers of `cluster_id` only), ready to serve until `stop`.
    pub fn routes(
        tasks_dir: PathBuf,
        cluster_id: &str,
        stop: CancellationToken,
        worker: WorkerCell,
    ) -> Routes {
        Routes::new(LogsServer::with_interceptor(
            LogsService { tasks_dir, stop },
            managers_by_certificate(cluster_id.to_string()),
        ))
        .add_service(InspectServer::with_interceptor(
            InspectService { worker },
            managers_by_certificate(cluster_id.to_string()),
        ))
    }
}

/// The worker, once it has started (the control port opens before it does).
pub type WorkerCell = Arc<std::sync::OnceLock<WorkerHandle>>;

/// `Inspect`: this node's kernel state of a network, from its worker.
pub struct InspectService {
    worker: WorkerCell,
}

#[tonic::async_trait]
impl Inspect for InspectService {
    async fn network_state(
        &self,
        req: Request<NetworkStateRequest>,
    ) -> Result<Response<NodeNetworkState>, Status> {
        let req = req.into_inner();
        if req.network_id.is_empty() || req.network_id.len() > 64 {
            return Err(Status::invalid_argument("network_id: 1 to 64 bytes"));
        }
        let worker = self
            .worker
            .get()
            .ok_or_else(|| Status::unavailable("the worker has not started yet"))?;
        worker
            .inspect_network(req.network_id, req.vni)
            .await
            .map(Response::new)
            .ok_or_else(|| Status::unavailable("the worker has stopped"))
    }
}

type Batches = ReceiverStream<Result<LogBatch, Status>>;

#[tonic::async_trait]
impl Logs for LogsService {
    type TaskLogsStream = Batches;

    async fn task_logs(
        &self,
        req: Request<TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let req = req.into_inner();
        validate_task_id(&req.task_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let dir = TaskDir::new(self.tasks_dir.join(&req.task_id));
        let (reader, backlog) = tokio::task::spawn_blocking(move || {
            let mut reader = LogReader::open(dir)?;
            let backlog = reader.backlog(req.tail)?;
            Ok::<_, std::io::Error>((reader, backlog))
        })
        .await
        .map_err(|e| Status::internal(format!("log reader failed: {e}")))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Status::not_found(format!(
                "task {} has no directory on this node (removed, or never started here)",
                req.task_id
            )),
            _ => Status::internal(format!("cannot read the output of {}: {e}", req.task_id)),
        })?;
        let (tx, rx) = mpsc::channel(4);
        let follow = req.follow.then(|| self.stop.clone());
        tokio::spawn(stream_records(reader, backlog, follow, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends `backlog`, then (with `follow`) new records until the caller goes away, the task
/// dir is removed, or `follow` is cancelled.
async fn stream_records(
    mut reader: LogReader,
    backlog: Vec<Record>,
    follow: Option<CancellationToken>,
    tx: mpsc::Sender<Result<LogBatch, Status>>,
) {
    if !send(&tx, backlog).await {
        return;
    }
    let Some(stop) = follow else { return };
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let removed = reader.task_removed();
        match reader.poll() {
            Ok(records) => {
                if !send(&tx, records).await {
                    return;
                }
            }
            // The dir went away under the read: the task was removed.
            Err(_) if reader.task_removed() => return,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("reading task output: {e}"))))
                    .await;
                return;
            }
        }
        if removed {
            return;
        }
    }
}

/// Sends `records` in batches; false when the caller is gone.
async fn send(tx: &mpsc::Sender<Result<LogBatch, Status>>, records: Vec<Record>) -> bool {
    let mut records = records.into_iter().map(|r| LogRecord {
        time: r.time,
        stream: r.stream.as_str().to_string(),
        text: r.text,
    });
    loop {
        let batch: Vec<LogRecord> = records.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            return true;
        }
        if tx.send(Ok(LogBatch { records: batch })).await.is_err() {
            return false;
        }
    }
}

/// How long a control port that is in use is retried: on a role change the server giving it
/// up lets go of its listener a moment after it stopped.
const HANDOVER: Duration = Duration::from_secs(5);

/// Listens on `addr` for the control port, retrying while the address is in use for up to
/// [`HANDOVER`].
pub async fn bind_control_port(addr: &str) -> anyhow::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + HANDOVER;
    let mut pause = Duration::from_millis(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot listen on {addr} for the control port"));
            }
        }
    }
}

/// A worker's control port: mTLS, serving only the node services. Managers serve these on
/// their own control port instead, so a role change stops one and starts the other.
pub struct NodePort {
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl NodePort {
    /// Serves `routes` on `listen_addr`; stopping the port cancels `shutdown`.
    pub async fn start(
        listen_addr: &str,
        creds: &Arc<Credentials>,
        routes: Routes,
        shutdown: CancellationToken,
    ) -> anyhow::Result<NodePort> {
        let listener = bind_control_port(listen_addr).await?;
        let incoming = tls::tls_incoming(listener, creds.server_config()?);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                error!(error = %e, "control port server failed");
            }
        });
        Ok(NodePort { shutdown, server })
    }

    /// Stops serving and frees the port.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}
