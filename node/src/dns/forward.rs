//! Forwarding of names that are not ours to the upstream resolvers, from inside the asking
//! task's network namespace (as Docker does: the query leaves by the task's own egress, so an
//! upstream reachable by the task is reachable here, whatever the agent's namespace sees).
//!
//! One query at a time per upstream, in the configured order: UDP first, then TCP for the
//! same upstream if the answer came back truncated. An answer of any response code is relayed
//! as it is, except SERVFAIL and REFUSED, which move on to the next upstream (and are relayed
//! only if no upstream does better). No upstream, no answer within
//! [`DnsConfig::forward_deadline`], or too many queries of this task already upstream: `None`,
//! which the server turns into SERVFAIL.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_server::net::runtime::RuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::net::xfer::{DnsExchange, DnsHandle, FirstAnswer, Protocol};
use hickory_server::net::{NetError, runtime::Spawn};
use hickory_server::proto::op::{
    DnsRequest, DnsRequestOptions, DnsResponse, Edns, Message, Query, ResponseCode,
};
use tokio::sync::Semaphore;
use tracing::debug;

use super::config::DnsConfig;
use super::sockets::NetnsRuntime;

/// Largest UDP payload asked of an upstream (what hickory's client can receive).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// Forwards one task's queries (see the module doc).
pub(crate) struct Forwarder {
    runtime: NetnsRuntime,
    config: Arc<DnsConfig>,
    /// Bounds this task's queries in flight upstream.
    permits: Semaphore,
}

/// The parts of the client's request that shape the upstream query.
pub(crate) struct Question<'a> {
    pub query: &'a Query,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub edns: Option<&'a Edns>,
}

impl Forwarder {
    pub(crate) fn new(runtime: NetnsRuntime, config: Arc<DnsConfig>) -> Self {
        let permits = Semaphore::new(config.max_forwards_per_task.max(1));
        Self {
            runtime,
            config,
            permits,
        }
    }

    /// The upstream's answer to `question`, or `None` for SERVFAIL.
    pub(crate) async fn forward(&self, question: Question<'_>) -> Option<DnsResponse> {
        if self.config.upstreams.is_empty() {
            debug!(query = %question.query, "no upstream resolver");
            return None;
        }
        let Ok(_permit) = self.permits.try_acquire() else {
            debug!(query = %question.query, "too many queries upstream");
            return None;
        };
        let request = upstream_request(&question);
        let deadline = self.config.forward_deadline;
        match tokio::time::timeout(deadline, self.try_upstreams(request)).await {
            Ok(answer) => answer,
            Err(_) => {
                debug!(query = %question.query, ?deadline, "upstreams too slow");
                None
            }
        }
    }

    async fn try_upstreams(&self, request: DnsRequest) -> Option<DnsResponse> {
        let mut fallback = None;
        for &upstream in &self.config.upstreams {
            let mut response = match self.ask(upstream, Protocol::Udp, &request).await {
                Ok(response) => response,
                Err(error) => {
                    debug!(%upstream, %error, "upstream failed over udp");
                    continue;
                }
            };
            if response.truncation {
                match self.ask(upstream, Protocol::Tcp, &request).await {
                    Ok(full) => response = full,
                    // The truncated answer is still an answer: the client may retry over TCP.
                    Err(error) => debug!(%upstream, %error, "upstream failed over tcp"),
                }
            }
            match response.response_code {
                ResponseCode::ServFail | ResponseCode::Refused => {
                    debug!(%upstream, code = %response.response_code, "trying the next upstream");
                    fallback = Some(response);
                }
                _ => return Some(response),
            }
        }
        fallback
    }

    async fn ask(
        &self,
        upstream: SocketAddr,
        protocol: Protocol,
        request: &DnsRequest,
    ) -> Result<DnsResponse, NetError> {
        let timeout = self.config.upstream_timeout;
        let exchange = match protocol {
            Protocol::Tcp => {
                let (connect, sender) =
                    TcpClientStream::new(upstream, None, Some(timeout), self.runtime.clone());
                let stream = tokio::time::timeout(timeout, connect)
                    .await
                    .map_err(|_| NetError::Timeout)??;
                let multiplexer =
                    hickory_server::net::DnsMultiplexer::new(stream, sender).with_timeout(timeout);
                let (exchange, background) = DnsExchange::from_stream(multiplexer);
                self.runtime.create_handle().spawn_bg(background);
                exchange
            }
            _ => UdpClientStream::builder(upstream, self.runtime.clone())
                .with_timeout(Some(timeout))
                // One bind, port chosen by the kernel (randomized): no retry loop that would
                // hop into the namespace once per attempt.
                .with_os_port_selection(true)
                .exchange(),
        };
        exchange.send(request.clone()).first_answer().await
    }
}

/// The query sent upstream: the client's question, RD and CD bits, and EDNS payload size
/// (capped to what can be received), under a fresh random id.
fn upstream_request(question: &Question<'_>) -> DnsRequest {
    let mut message = Message::query();
    message.add_query(question.query.clone());
    message.metadata.recursion_desired = question.recursion_desired;
    message.metadata.checking_disabled = question.checking_disabled;
    if let Some(client) = question.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(client.max_payload().min(MAX_UDP_PAYLOAD))
            .set_dnssec_ok(client.flags().dnssec_ok);
        message.set_edns(edns);
    }
    DnsRequest::new(message, DnsRequestOptions::default())
}
