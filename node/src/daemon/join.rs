//! The joiner's side of the join handshake.
//!
//! 1. Fetch the root CA over TLS without trusting the server yet, and check
//!    its SHA-256 against the digest in the token: a wrong token or a
//!    manager of another cluster stops here, before anything is sent.
//! 2. Over TLS pinned to that CA, send the token and a CSR for a key that
//!    never leaves this node; receive the node certificate (following a
//!    redirect to the leader if the manager is a follower).

use std::time::Duration;

use mesh_common::leader::leader_hint;
use mesh_common::pki::{self, JoinToken, NodeKey};
use mesh_common::{channels, tls};
use mesh_proto::ca_client::CaClient;
use mesh_proto::{GetRootCaRequest, IssueNodeCertificateRequest, IssueNodeCertificateResponse};
use tonic::{Code, Status};

use crate::state_dir::Certs;

pub struct Joined {
    pub resp: IssueNodeCertificateResponse,
    pub certs: Certs,
}

pub struct JoinParams<'a> {
    pub token: &'a JoinToken,
    pub token_text: &'a str,
    pub remote: &'a str,
    pub hostname: &'a str,
    pub addr: &'a str,
    pub control_port: u16,
    pub gossip_port: u16,
    pub timeout: Duration,
}

fn unreachable(remote: &str, s: &Status) -> Status {
    if s.code() == Code::Unavailable
        || s.code() == Code::Unknown
        || s.code() == Code::DeadlineExceeded
    {
        Status::unavailable(format!(
            "cannot reach a manager at {remote}: {}",
            s.message()
        ))
    } else {
        s.clone()
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

pub async fn handshake(p: JoinParams<'_>) -> Result<Joined, Status> {
    let insecure = tls::bootstrap_insecure_client_config().map_err(internal)?;
    let ch = channels::manager_channel(p.remote, insecure).map_err(internal)?;
    let mut req = tonic::Request::new(GetRootCaRequest {});
    req.set_timeout(p.timeout);
    let ca_pem = CaClient::new(ch)
        .get_root_ca(req)
        .await
        .map_err(|s| unreachable(p.remote, &s))?
        .into_inner()
        .ca_cert_pem;
    let digest = pki::ca_digest(&ca_pem).map_err(|e| {
        Status::permission_denied(format!("manager at {} sent an unusable CA: {e}", p.remote))
    })?;
    if digest != p.token.ca_digest {
        return Err(Status::permission_denied(format!(
            "join token does not match the CA of the cluster at {} (CA digest mismatch): wrong token, or a manager of another cluster",
            p.remote
        )));
    }
    let pinned = tls::bootstrap_client_config(&ca_pem).map_err(internal)?;
    let key = NodeKey::generate().map_err(internal)?;
    let csr_pem = key.csr_pem().map_err(internal)?;
    let issue = IssueNodeCertificateRequest {
        token: p.token_text.to_string(),
        csr_pem,
        hostname: p.hostname.to_string(),
        addr: p.addr.to_string(),
        control_port: u32::from(p.control_port),
        gossip_port: u32::from(p.gossip_port),
    };
    let mut target = p.remote.to_string();
    for _ in 0..3 {
        let ch = channels::manager_channel(&target, pinned.clone()).map_err(internal)?;
        let mut req = tonic::Request::new(issue.clone());
        req.set_timeout(p.timeout);
        match CaClient::new(ch).issue_node_certificate(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let certs = Certs {
                    ca_pem,
                    cert_pem: resp.cert_pem.clone(),
                    key_pem: key.to_pem(),
                };
                return Ok(Joined { resp, certs });
            }
            Err(s) => match leader_hint(&s) {
                Some(leader) if leader != target => target = leader,
                _ => return Err(unreachable(&target, &s)),
            },
        }
    }
    Err(Status::unavailable(
        "the managers kept redirecting the join: no stable leader",
    ))
}
