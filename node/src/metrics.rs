//! `mesh daemon --metrics-addr IP:PORT`: the daemon's metrics
//! ([`mesh_common::metrics::Metrics`]) over HTTP, in the Prometheus text format, as dockerd's
//! `metrics-addr` serves its own. `GET /metrics` answers them; any other path is 404 and any
//! other method 405.
//!
//! The address is checked and bound when the daemon starts ([`bind`]), so a bad or taken
//! address stops it with one line instead of leaving it without metrics; [`serve`] takes the
//! bound listener and a shutdown token.
//!
//! # Bounds
//! At most [`MAX_CONNECTIONS`] connections are served at once (more wait in the kernel's
//! backlog); a request head may hold at most [`MAX_HEAD_BYTES`] and must arrive within
//! [`HEAD_TIMEOUT`]; a connection serves one request and lasts at most
//! [`CONNECTION_TIMEOUT`]; a request body is never read. A scrape reads the registry's
//! atomics and nothing else of the daemon, so it never waits on the daemon, and the daemon
//! never waits on a scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_common::metrics::{self, Metrics};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Docker's metrics port, for the examples.
pub const EXAMPLE_ADDR: &str = "127.0.0.1:9323";
/// The path that answers.
pub const PATH: &str = "/metrics";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers); hyper's floor is 8 KiB.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses the metrics address given by `source` (the flag or the config key): an
/// `IP:PORT`.
pub fn parse_addr(source: &str, text: &str) -> anyhow::Result<SocketAddr> {
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!("{source}: {text:?} is not an IP:PORT address (such as {EXAMPLE_ADDR})")
    })
}

/// Binds the metrics listener on `addr`, unless its port is one of `reserved` (a port of
/// the cluster's own, with what it is for) or the address is taken.
pub async fn bind(
    source: &str,
    addr: SocketAddr,
    reserved: &[(u16, &str)],
) -> anyhow::Result<TcpListener> {
    if let Some((port, what)) = reserved.iter().find(|(p, _)| *p == addr.port()) {
        anyhow::bail!("{source}: port {port} of {addr} is the cluster's {what} port");
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{source}: cannot listen on {addr}"))
}

/// Serves `metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, path = PATH, "serving metrics");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // Never closed: the semaphore lives here.
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    serve_connection(stream, peer, metrics).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics listener: cannot accept");
                // A persistent error (out of file descriptors) must not spin the loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, metrics: Arc<Metrics>) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = respond(req.method(), req.uri().path(), &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection"),
        Err(_) => debug!(%peer, "metrics connection timed out"),
    }
}

/// The answer to `method path`.
fn respond(method: &Method, path: &str, metrics: &Metrics) -> Response<String> {
    let plain = |status: StatusCode, body: &str| {
        let mut r = Response::new(format!("{body}\n"));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if path != PATH {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are at /metrics");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = Response::new(metrics.encode());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server() -> (SocketAddr, Arc<Metrics>, CancellationToken) {
        let listener = bind("--metrics-addr", "127.0.0.1:0".parse().unwrap(), &[])
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, metrics.clone(), stop.clone()));
        (addr, metrics, stop)
    }

    /// Sends `request` as is and returns the whole response.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn get_metrics_answers_the_registry_in_the_text_format() {
        let (addr, metrics, stop) = server().await;
        metrics.worker.set_fdb_entries(7);
        let resp = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let scrape =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        let fdb = scrape
            .samples
            .iter()
            .find(|s| s.metric == "mesh_overlay_fdb_entries")
            .expect("fdb entries exported");
        assert!(matches!(fdb.value, prometheus_parse::Value::Gauge(v) if v == 7.0));
        stop.cancel();
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let (addr, _metrics, stop) = server().await;
        let resp = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        let resp = exchange(addr, b"GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        let resp = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let (addr, _metrics, stop) = server().await;
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 64 * 1024));
        req.extend(b"\r\n\r\n");
        let resp = exchange(addr, &req).await;
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp:.80}");
        stop.cancel();
    }

    #[tokio::test]
    async fn reserved_and_taken_ports_are_refused_in_one_line() {
        let addr: SocketAddr = "127.0.0.1:2377".parse().unwrap();
        let err = bind("--metrics-addr", addr, &[(2377, "control")])
            .await
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "--metrics-addr: port 2377 of 127.0.0.1:2377 is the cluster's control port"
        );
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind("[metrics] addr", addr, &[]).await.unwrap_err();
        let line = format!("{err:#}");
        assert!(
            line.starts_with(&format!("[metrics] addr: cannot listen on {addr}: ")),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let err = parse_addr("--metrics-addr", "localhost").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--metrics-addr: \"localhost\" is not an IP:PORT address (such as 127.0.0.1:9323)"
        );
    }
}
