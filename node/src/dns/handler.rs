//! The request handler of one task's server: mesh names from the shared table, scoped to the
//! task's networks; everything else through the task's [`Forwarder`].
//!
//! hickory-server has already parsed the message (a datagram shorter than a header is dropped,
//! an unparsable one gets FORMERR, responses are ignored). Here: an opcode other than QUERY
//! gets NOTIMP, a query count other than one gets FORMERR, and a failure to answer is SERVFAIL.
//! Mesh answers are authoritative A records with TTL [`MESH_TTL`]. A negative answer of ours
//! (NXDOMAIN, or NODATA: a mesh name asked for AAAA, or a service with no task right now)
//! carries the synthetic SOA of [`soa`] in its authority section, so resolvers cache it for
//! [`NEGATIVE_TTL`] (RFC 2308) instead of asking again at once.

use std::iter;
use std::sync::{Arc, PoisonError, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use mesh_common::metrics::{DnsMetrics, DnsResult};
use tokio::time::Instant;
use tracing::debug;

use super::forward::{Forwarder, Question};
use super::table::{Answer, NameTable};

/// TTL of mesh answers, in seconds. Docker answers 600, but these records change as services
/// scale and tasks move: a `dnsrr` name or `tasks.NAME` cached for ten minutes keeps a task
/// that is gone. 5 s lets a resolver that caches (systemd-resolved, nscd, a JVM) follow a
/// scale within seconds, and still answers a burst of lookups of one program from its cache.
/// (A VIP rarely changes; the tasks behind it do, and the VIP hides that.)
pub const MESH_TTL: u32 = 5;

/// How long a negative answer of ours may be cached, in seconds (the SOA's minimum and its
/// own TTL, RFC 2308): as short as [`MESH_TTL`], since a name appears as soon as its service
/// is created or the task is attached to its network.
pub const NEGATIVE_TTL: u32 = 5;

/// The synthetic SOA of the names a task's resolver answers itself. Mesh names are single
/// labels (`web`, `tasks.web`, `web.1`) answered by the resolver of each task, so the zone
/// they sit in is the root as that resolver sees it; the server names are under `.invalid`
/// (RFC 2606), which exists nowhere. Only `minimum` matters to a resolver.
pub(crate) fn soa() -> Record {
    let name = |text: &str| Name::from_ascii(text).expect("a valid constant name");
    let soa = SOA::new(
        name("ns.mesh.invalid."),
        name("hostmaster.mesh.invalid."),
        1,
        3600,
        600,
        86400,
        NEGATIVE_TTL,
    );
    Record::from_rdata(Name::root(), NEGATIVE_TTL, RData::SOA(soa))
}

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

        let (records, negative): (Vec<Record>, Vec<Record>) = match answer {
            Answer::Addrs(addrs) => {
                let name = query.original().name();
                let records = addrs
                    .into_iter()
                    .map(|ip| Record::from_rdata(name.clone(), MESH_TTL, RData::A(A(ip))))
                    .collect();
                (records, Vec::new())
            }
            Answer::NoData => (Vec::new(), vec![soa()]),
            Answer::NxDomain => {
                *result = DnsResult::NxDomain;
                metadata.response_code = ResponseCode::NXDomain;
                (Vec::new(), vec![soa()])
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
        if metadata.response_code != ResponseCode::NXDomain {
            *result = DnsResult::NoError;
        }
        metadata.authoritative = true;
        let response = builder.build(
            metadata,
            records.iter(),
            iter::empty(),
            negative.iter(),
            iter::empty(),
        );
        response_handle.send_response(response).await
    }
}
