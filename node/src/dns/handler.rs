//! The request handler of one task's server: mesh names from the shared table, scoped to the
//! task's networks; everything else through the task's [`Forwarder`].
//!
//! hickory-server has already parsed the message (a datagram shorter than a header is dropped,
//! an unparsable one gets FORMERR, responses are ignored). Here: an opcode other than QUERY
//! gets NOTIMP, a query count other than one gets FORMERR, and a failure to answer is SERVFAIL.
//! Mesh answers are authoritative A records with TTL 0 (they change as services scale) and no
//! SOA (nothing to cache negatively either).

use std::iter;
use std::sync::{Arc, PoisonError, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{DNSClass, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use mesh_common::metrics::{DnsMetrics, DnsResult};
use tokio::time::Instant;
use tracing::debug;

use super::forward::{Forwarder, Question};
use super::table::{Answer, NameTable};

/// The name table shared by every task's server; the agent updates it from gossip.
#[derive(Clone, Debug, Default)]
pub struct SharedTable(Arc<RwLock<NameTable>>);

impl SharedTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes the table; servers see the change from their next query on.
    pub fn update<R>(&self, change: impl FnOnce(&mut NameTable) -> R) -> R {
        // A panic in another `change` leaves a table that is still consistent enough to
        // answer from: each mutation rebuilds its network's index last.
        let mut table = self.0.write().unwrap_or_else(PoisonError::into_inner);
        change(&mut table)
    }

    /// [`NameTable::resolve`] under the read lock.
    pub fn resolve(
        &self,
        networks: &[String],
        qname: &str,
        qtype: hickory_server::proto::rr::RecordType,
    ) -> Answer {
        let table = self.0.read().unwrap_or_else(PoisonError::into_inner);
        table.resolve(networks, qname, qtype)
    }
}

/// The networks a task is attached to, in order; replaced when the task is re-attached.
pub(crate) type TaskNetworks = Arc<RwLock<Arc<[String]>>>;

/// Answers the queries of one task.
pub(crate) struct TaskHandler {
    pub(crate) task: String,
    pub(crate) table: SharedTable,
    pub(crate) networks: TaskNetworks,
    pub(crate) forwarder: Forwarder,
    pub(crate) metrics: DnsMetrics,
}

#[async_trait::async_trait]
impl RequestHandler for TaskHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let mut result = DnsResult::ServFail;
        let answered = self
            .answer(request, &mut response_handle, &mut result)
            .await;
        let info = answered.unwrap_or_else(|error| {
            debug!(task = %self.task, %error, "cannot send dns response");
            result = DnsResult::ServFail;
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        });
        self.metrics.answered(result, start.elapsed());
        info
    }
}

impl TaskHandler {
    /// Answers `request`; `result` says how, for the metrics.
    async fn answer<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: &mut R,
        result: &mut DnsResult,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        // RFC 6891: a query with EDNS gets EDNS back. Its payload size is the client's: the
        // encoder truncates UDP answers (TC bit) to it.
        let edns = request.edns.as_ref().map(|client| {
            let mut edns = Edns::new();
            edns.set_max_payload(client.max_payload());
            edns
        });
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;

        if request.metadata.op_code != OpCode::Query {
            *result = DnsResult::Malformed;
            let response = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return response_handle.send_response(response).await;
        }
        let Ok(info) = request.request_info() else {
            *result = DnsResult::Malformed;
            let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response_handle.send_response(response).await;
        };
        let query = info.query;

        let answer = if query.query_class() == DNSClass::IN {
            let networks = self
                .networks
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let qname = query.name().to_string();
            self.table.resolve(&networks, &qname, query.query_type())
        } else {
            Answer::Forward
        };

        let records: Vec<Record> = match answer {
            Answer::Addrs(addrs) => addrs
                .into_iter()
                .map(|ip| Record::from_rdata(query.original().name().clone(), 0, RData::A(A(ip))))
                .collect(),
            Answer::NoData => Vec::new(),
            Answer::NxDomain => {
                *result = DnsResult::NxDomain;
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                let response = builder.build_no_records(metadata);
                return response_handle.send_response(response).await;
            }
            Answer::Forward => {
                let question = Question {
                    query: query.original(),
                    recursion_desired: request.metadata.recursion_desired,
                    checking_disabled: request.metadata.checking_disabled,
                    edns: request.edns.as_ref(),
                };
                let Some(upstream) = self.forwarder.forward(question).await else {
                    *result = DnsResult::ServFail;
                    let response = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                    return response_handle.send_response(response).await;
                };
                *result = DnsResult::Forwarded;
                metadata.response_code = upstream.response_code;
                metadata.authoritative = upstream.authoritative;
                metadata.recursion_available = upstream.recursion_available;
                metadata.authentic_data = upstream.authentic_data;
                metadata.truncation = upstream.truncation;
                let response = builder.build(
                    metadata,
                    upstream.answers.iter(),
                    upstream.authorities.iter(),
                    iter::empty(),
                    upstream.additionals.iter(),
                );
                return response_handle.send_response(response).await;
            }
        };
        *result = DnsResult::NoError;
        metadata.authoritative = true;
        let response = builder.build(
            metadata,
            records.iter(),
            iter::empty(),
            iter::empty(),
            iter::empty(),
        );
        response_handle.send_response(response).await
    }
}
