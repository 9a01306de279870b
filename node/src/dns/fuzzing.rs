//! A task's DNS server answering raw messages in memory, with no upstream resolver: the
//! fuzz targets feed it whatever bytes a task could send to 127.0.0.11.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use mesh_dataplane::netns::Netns;

use super::config::DnsConfig;
use super::forward::Forwarder;
use super::handler::{SharedTable, TaskHandler};
use super::sockets::{NetnsRuntime, NetnsSockets};

/// One task's handler over `table`, attached to `networks`. Names it does not know get
/// SERVFAIL (there is no upstream), so nothing ever leaves the process.
pub struct Responder {
    handler: TaskHandler,
}

impl Responder {
    pub fn new(table: SharedTable, networks: Vec<String>) -> std::io::Result<Self> {
        let ns = Netns::current().map_err(std::io::Error::other)?;
        let config = Arc::new(DnsConfig::with_upstreams(Vec::new()));
        Ok(Self {
            handler: TaskHandler {
                task: "fuzz".into(),
                table,
                networks: Arc::new(RwLock::new(networks.into())),
                forwarder: Forwarder::new(
                    NetnsRuntime::new(Arc::new(ns), NetnsSockets::new()),
                    config,
                ),
                metrics: Default::default(),
            },
        })
    }

    /// The encoded answer to `raw` as a UDP query, or `None` where the server would drop it
    /// (hickory answers an unparsable message with FORMERR itself, before the handler).
    pub async fn answer(&self, raw: Vec<u8>) -> Option<Vec<u8>> {
        let src = SocketAddr::from((Ipv4Addr::new(10, 0, 1, 9), 5353));
        let request = Request::from_bytes(raw, src, Protocol::Udp).ok()?;
        let sent = Captured::default();
        self.handler
            .handle_request::<_, TokioTime>(&request, sent.clone())
            .await;
        sent.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Keeps the encoded response instead of sending it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Captured {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // As the UDP server encodes it, at the largest size a client's EDNS may allow.
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = response.destructive_emit(&mut encoder)?;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
        Ok(info)
    }
}
