//! The agent: keeps a session with the leader, feeds what it learns to the
//! gossip layer, renews the node certificate (before expiry and when the
//! node's role changes), and tells the daemon what it must act on.
//!
//! The session loop owns the connection: it follows `mesh-leader` redirects,
//! rotates through the known managers with a capped exponential backoff, and
//! publishes the manager it is connected to (the upstream for forwarded CLI
//! calls on workers).

use std::sync::Arc;
use std::time::Duration;

use mesh_common::channels::{ChannelProvider, TlsChannels};
use mesh_common::leader::leader_hint;
use mesh_common::pki::NodeKey;
use mesh_common::time::now_secs;
use mesh_common::tls::Credentials;
use mesh_proto::ca_client::CaClient;
use mesh_proto::dispatcher_client::DispatcherClient;
use mesh_proto::{NodeRole, RenewNodeCertificateRequest, SessionMessage, SessionRequest};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::membership::Membership;
use crate::state_dir::{Certs, StateDir};
use crate::worker::{Session, WorkerHandle};

/// Largest session message the agent accepts.
const MAX_SESSION_MESSAGE: usize = 256 << 20;

/// What the agent asks the daemon to do.
#[derive(Debug)]
pub enum AgentEvent {
    /// The managers' addresses changed: persist them for the next start.
    Managers(Vec<String>),
    /// The node certificate now carries another role.
    RoleChanged(NodeRole),
    /// The cluster removed this node.
    Removed(String),
}

pub struct Agent {
    pub node_id: String,
    pub hostname: String,
    pub creds: Arc<Credentials>,
    pub channels: Arc<TlsChannels>,
    pub dir: StateDir,
    pub config: AgentConfig,
    /// How often the certificate's age is checked.
    pub renew_check: Duration,
    pub membership: Membership,
    pub worker: WorkerHandle,
    pub managers: Vec<String>,
    /// The manager the session is connected to, for forwarding.
    pub upstream: watch::Sender<Option<String>>,
    pub events: mpsc::Sender<AgentEvent>,
}

/// True when a status says this node was removed from the cluster. Only
/// the managers' removed list says so: a manager that merely does not know
/// the node (its store is behind) answers UNAVAILABLE instead.
fn is_removed(status: &Status) -> bool {
    status.code() == Code::Unauthenticated && status.message().contains("was removed")
}

impl Agent {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        let mut redirects = 0u32;
        let mut backoff = Duration::from_millis(self.config.session_retry_ms);
        let max_backoff = Duration::from_millis(self.config.session_retry_max_ms);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let target = match hint.take() {
                Some(h) => h,
                None if self.managers.is_empty() => {
                    warn!("no manager address known; waiting");
                    if sleep_or_cancel(max_backoff, &shutdown).await {
                        return;
                    }
                    continue;
                }
                None => {
                    next = (next + 1) % self.managers.len();
                    self.managers[next].clone()
                }
            };
            let mut established = false;
            let status = match self.session(&target, &mut established, &shutdown).await {
                Ok(()) => return,
                Err(status) => status,
            };
            if established {
                backoff = Duration::from_millis(self.config.session_retry_ms);
            }
            let _ = self.upstream.send(None);
            if is_removed(&status) {
                warn!(error = %status.message(), "this node was removed from the cluster");
                let _ = self
                    .events
                    .send(AgentEvent::Removed(status.message().to_string()))
                    .await;
                return;
            }
            match leader_hint(&status) {
                Some(h) if h != target && redirects < 3 => {
                    debug!(from = %target, to = %h, "following leader redirect");
                    redirects += 1;
                    hint = Some(h);
                    continue;
                }
                _ => {}
            }
            redirects = 0;
            debug!(manager = %target, error = %status.message(), code = ?status.code(), "session ended");
            if sleep_or_cancel(backoff, &shutdown).await {
                return;
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// One session with `target`: `Ok` only on shutdown.
    async fn session(
        &mut self,
        target: &str,
        established: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Status> {
        let channel = self
            .channels
            .channel(target)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        // The first message holds every assignment of this node: more than tonic's 4 MiB
        // default when it runs many tasks.
        let mut client =
            DispatcherClient::new(channel).max_decoding_message_size(MAX_SESSION_MESSAGE);
        let mut stream = tokio::select! {
            r = client.session(SessionRequest { hostname: self.hostname.clone() }) => r?.into_inner(),
            () = shutdown.cancelled() => return Ok(()),
        };
        info!(manager = %target, "session with the leader established");
        *established = true;
        let _ = self.upstream.send(Some(target.to_string()));
        let mut renew = tokio::time::interval(self.renew_check);
        renew.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                msg = stream.message() => match msg? {
                    Some(msg) => self.apply(target, msg).await?,
                    None => return Err(Status::unavailable("session closed by the manager")),
                },
                _ = renew.tick() => {
                    let id = self.creds.identity();
                    if id.needs_renewal(now_secs(), self.config.renew_at_fraction) {
                        self.renew(target).await?;
                    }
                }
            }
        }
    }

    async fn apply(&mut self, target: &str, msg: SessionMessage) -> Result<(), Status> {
        if !msg.managers.is_empty() && msg.managers != self.managers {
            self.managers = msg.managers.clone();
            let _ = self
                .events
                .send(AgentEvent::Managers(msg.managers.clone()))
                .await;
        }
        self.membership.set_keys(&msg.gossip_keys);
        self.membership.set_peers(&msg.peers);
        if let Some(assignments) = msg.assignments {
            self.worker.session(Session {
                assignments,
                data_port: u16::try_from(msg.data_path_port).unwrap_or(0),
                ingress: msg.node.as_ref().and_then(|n| n.ingress.clone()),
                peers: msg.peers.clone(),
                routed: msg.routed_ports.clone(),
                service_names: msg.service_names.clone(),
            });
        }
        let Some(node) = msg.node else { return Ok(()) };
        let desired = node
            .spec
            .as_ref()
            .map(|s| s.desired_role())
            .unwrap_or(node.role());
        let id = self.creds.identity();
        let expiring = id.needs_renewal(now_secs(), self.config.renew_at_fraction);
        if desired != id.role || node.role() != id.role || expiring {
            self.renew(target).await?;
        }
        Ok(())
    }

    /// Gets a new certificate for a new key from the leader.
    async fn renew(&mut self, target: &str) -> Result<(), Status> {
        let before = self.creds.identity().role;
        let key = NodeKey::generate().map_err(|e| Status::internal(e.to_string()))?;
        let csr = key.csr_pem().map_err(|e| Status::internal(e.to_string()))?;
        let channel = self
            .channels
            .channel(target)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = CaClient::new(channel)
            .renew_node_certificate(RenewNodeCertificateRequest { csr_pem: csr })
            .await?
            .into_inner();
        let after = resp.role();
        let key_pem = key.to_pem();
        self.creds
            .replace(&resp.cert_pem, &key_pem)
            .map_err(|e| Status::internal(e.to_string()))?;
        // New connections present the new certificate (and role).
        self.channels.reset();
        let certs = Certs {
            ca_pem: self.creds.ca_pem().to_string(),
            cert_pem: resp.cert_pem,
            key_pem,
        };
        if let Err(e) = self.dir.save_certs(&certs) {
            warn!(error = %format!("{e:#}"), "cannot persist the renewed certificate");
        }
        info!(node = %self.node_id, role = ?after, "certificate renewed");
        if after != before {
            let _ = self.events.send(AgentEvent::RoleChanged(after)).await;
        }
        Ok(())
    }
}

/// Sleeps for `d`; true when cancelled first.
async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = shutdown.cancelled() => true,
    }
}
