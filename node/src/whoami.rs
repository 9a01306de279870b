//! `mesh whoami`: a tiny server that says which task answered and who asked, used as the task
//! process in demos and tests.
//!
//! # Protocol
//! - **HTTP/1.1 over TCP**, any method and path, keep-alive unless the client says
//!   `Connection: close` (or speaks HTTP/1.0 without `keep-alive`):
//!   - `/health`: `ok`.
//!   - `/stream[?interval_ms=N]`: answers `200`, then writes one line
//!     `<n> task=<task> client=<addr:port>` every interval (default `--stream-interval`, 1 s)
//!     until the client closes: a long-lived connection for tests that must survive agent
//!     restarts or LB changes. The body ends when the connection does (no length).
//!   - anything else: the report, as `key: value` lines, or as JSON with `?format=json` or
//!     `Accept: application/json` (keys `task, task_id, service, node, node_id, hostname,
//!     addresses, client, server`).
//! - **UDP** on the same port (unless `--no-udp`): every datagram is answered with the
//!   report as text, or as JSON if the datagram is `json`.
//!
//! The report: the task and node (from `MESH_TASK_NAME`, `MESH_TASK_ID`, `MESH_SERVICE_NAME`,
//! `MESH_NODE_HOSTNAME`, `MESH_NODE_ID`; empty when unset), the host name, every IPv4
//! address of the non-loopback interfaces, and the client's and server's address and port as
//! this socket saw them (so tests can check that a client's source address is preserved).
//!
//! Bad input gets `400`/`413`/`431`/`501` and the connection is closed; a request head must
//! arrive within 30 s. Each connection is its own task.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Longest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Longest request body read (and discarded).
const MAX_BODY: usize = 1024 * 1024;
/// How long a request head may take to arrive, and a keep-alive connection may stay idle.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `mesh whoami`.
#[derive(clap::Args, Debug, Clone)]
pub struct WhoamiArgs {
    /// TCP port, and UDP port unless --no-udp.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// Do not answer UDP.
    #[arg(long)]
    pub no_udp: bool,
    /// Interval between the lines of /stream (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub stream_interval: Duration,
}

/// Who this server is, as the agent told it through the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub task: String,
    pub task_id: String,
    pub service: String,
    pub node: String,
    pub node_id: String,
}

impl Identity {
    /// From `MESH_TASK_NAME`, `MESH_TASK_ID`, `MESH_SERVICE_NAME`, `MESH_NODE_HOSTNAME` and
    /// `MESH_NODE_ID` (empty when unset).
    pub fn from_env() -> Identity {
        let var = |name| std::env::var(name).unwrap_or_default();
        Identity {
            task: var("MESH_TASK_NAME"),
            task_id: var("MESH_TASK_ID"),
            service: var("MESH_SERVICE_NAME"),
            node: var("MESH_NODE_HOSTNAME"),
            node_id: var("MESH_NODE_ID"),
        }
    }
}

/// What the server needs besides its sockets.
#[derive(Debug, Clone)]
pub struct WhoamiConfig {
    pub identity: Identity,
    /// Default interval of `/stream` lines.
    pub stream_interval: Duration,
}

/// The answer, as text or JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub task: String,
    pub task_id: String,
    pub service: String,
    pub node: String,
    pub node_id: String,
    pub hostname: String,
    /// IPv4 addresses of the non-loopback interfaces, sorted.
    pub addresses: Vec<String>,
    /// The peer as this socket saw it (`ip:port`).
    pub client: String,
    /// The local address the request arrived on (`ip:port`).
    pub server: String,
}

impl Report {
    /// The report for a request from `client` that arrived on `server`.
    pub fn new(identity: &Identity, client: SocketAddr, server: SocketAddr) -> Report {
        Report {
            task: identity.task.clone(),
            task_id: identity.task_id.clone(),
            service: identity.service.clone(),
            node: identity.node.clone(),
            node_id: identity.node_id.clone(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            addresses: interface_addresses(),
            client: client.to_string(),
            server: server.to_string(),
        }
    }

    /// `key: value` lines.
    pub fn to_text(&self) -> String {
        format!(
            "task: {}\ntask_id: {}\nservice: {}\nnode: {}\nnode_id: {}\nhostname: {}\naddresses: {}\nclient: {}\nserver: {}\n",
            self.task,
            self.task_id,
            self.service,
            self.node,
            self.node_id,
            self.hostname,
            self.addresses.join(" "),
            self.client,
            self.server
        )
    }

    /// One line of JSON.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        json.push('\n');
        json
    }
}

/// IPv4 addresses of every interface but loopback ones, sorted and deduplicated.
pub fn interface_addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let set: BTreeSet<Ipv4Addr> = addrs
        .filter(|a| {
            !a.flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| a.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .collect();
    set.into_iter().map(|ip| ip.to_string()).collect()
}

/// Entry point of `mesh whoami`: serves until SIGTERM or SIGINT, then exits 0.
pub fn run(args: WhoamiArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let addr = SocketAddr::new(args.bind, args.port);
        let tcp = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: listen on tcp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let local = tcp.local_addr().unwrap_or(addr);
        let udp = if args.no_udp {
            None
        } else {
            match UdpSocket::bind(local).await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("error: listen on udp {local}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        };
        let protocols = if udp.is_some() { "tcp+udp" } else { "tcp" };
        println!("whoami listening on {local} ({protocols})");
        let config = WhoamiConfig {
            identity: Identity::from_env(),
            stream_interval: args.stream_interval,
        };
        serve(tcp, udp, config, stop_signal()).await;
        println!("whoami stopping");
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be installed).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Serves HTTP on `tcp` and datagrams on `udp` until `shutdown` resolves. Connections in
/// progress are not waited for.
pub async fn serve(
    tcp: TcpListener,
    udp: Option<UdpSocket>,
    config: WhoamiConfig,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let udp_task = udp.map(|socket| tokio::spawn(serve_udp(socket, config.clone())));
    tokio::select! {
        _ = accept_loop(tcp, config) => {}
        _ = shutdown => {}
    }
    if let Some(task) = udp_task {
        task.abort();
    }
}

async fn accept_loop(tcp: TcpListener, config: Arc<WhoamiConfig>) {
    loop {
        match tcp.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle_connection(stream, config.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_udp(socket: UdpSocket, config: Arc<WhoamiConfig>) {
    let server = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let report = Report::new(&config.identity, client, server);
        let reply = if buf[..n].trim_ascii() == b"json" {
            report.to_json()
        } else {
            report.to_text()
        };
        if let Err(e) = socket.send_to(reply.as_bytes(), client).await {
            tracing::debug!(error = %e, %client, "udp reply failed");
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    query: String,
    keep_alive: bool,
    wants_json: bool,
    content_length: usize,
}

/// Why a request is refused: status line and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    status: &'static str,
    message: &'static str,
}

const fn refuse(status: &'static str, message: &'static str) -> Refusal {
    Refusal { status, message }
}

async fn handle_connection(mut stream: TcpStream, config: Arc<WhoamiConfig>) {
    let (Ok(client), Ok(server)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head =
            match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut buf)).await {
                Ok(Ok(Some(head))) => head,
                // Closed between requests, timed out, or broken.
                Ok(Ok(None)) | Err(_) | Ok(Err(_)) => return,
            };
        let request = match head.and_then(|h| parse_head(&h)) {
            Ok(r) => r,
            Err(refusal) => {
                let _ = write_refusal(&mut stream, &refusal).await;
                return;
            }
        };
        if request.content_length > MAX_BODY {
            let _ = write_refusal(
                &mut stream,
                &refuse("413 Content Too Large", "body too large"),
            )
            .await;
            return;
        }
        if discard_body(&mut stream, &mut buf, request.content_length)
            .await
            .is_err()
        {
            return;
        }
        let keep_alive = match request.path.as_str() {
            "/stream" => {
                stream_lines(&mut stream, &request, &config, client).await;
                return;
            }
            "/health" => {
                write_response(&mut stream, &request, "text/plain; charset=utf-8", "ok\n").await
            }
            _ => {
                let report = Report::new(&config.identity, client, server);
                if request.wants_json {
                    write_response(&mut stream, &request, "application/json", &report.to_json())
                        .await
                } else {
                    let body = report.to_text();
                    write_response(&mut stream, &request, "text/plain; charset=utf-8", &body).await
                }
            }
        };
        if !matches!(keep_alive, Ok(true)) {
            return;
        }
    }
}

/// Reads until `buf` holds a complete head, and takes it out of `buf` (what follows stays).
/// `Ok(None)` on a clean close before any byte of a request; `Ok(Some(Err))` for a head that
/// is too long.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Result<Vec<u8>, Refusal>>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(buf) {
            let head: Vec<u8> = buf.drain(..end).collect();
            return Ok(Some(Ok(head)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(Err(refuse(
                "431 Request Header Fields Too Large",
                "request head too large",
            ))));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.iter().all(u8::is_ascii_whitespace) {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The length of the head in `buf` including its blank line (`\r\n\r\n` or a bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    let bad = refuse("400 Bad Request", "malformed request");
    let text = std::str::from_utf8(head).map_err(|_| refuse("400 Bad Request", "not utf-8"))?;
    // Tolerate blank lines before the request line (RFC 9112 section 2.2).
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().ok_or(bad)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => {
            return Err(refuse(
                "505 HTTP Version Not Supported",
                "only HTTP/1.0 and HTTP/1.1",
            ));
        }
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        keep_alive: http11,
        wants_json: query.split('&').any(|p| p == "format=json"),
        content_length: 0,
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(bad)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            let has = |token: &str| {
                value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            };
            if has("close") {
                request.keep_alive = false;
            } else if has("keep-alive") {
                request.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("accept") {
            if value.contains("application/json") && !query.contains("format=text") {
                request.wants_json = true;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            request.content_length = value.parse().map_err(|_| bad)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(refuse(
                "501 Not Implemented",
                "request bodies must have a content-length",
            ));
        }
    }
    Ok(request)
}

/// Reads and drops `len` body bytes, the first ones possibly already in `buf`.
async fn discard_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let buffered = len.min(buf.len());
    buf.drain(..buffered);
    let mut left = len - buffered;
    let mut chunk = [0u8; 8192];
    while left > 0 {
        let want = left.min(chunk.len());
        let n = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut chunk[..want]))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= n;
    }
    Ok(())
}

/// Writes a 200 answer; `Ok(keep_alive)`.
async fn write_response(
    stream: &mut TcpStream,
    request: &Request,
    content_type: &str,
    body: &str,
) -> io::Result<bool> {
    let connection = if request.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    if request.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    Ok(request.keep_alive)
}

async fn write_refusal(stream: &mut TcpStream, refusal: &Refusal) -> io::Result<()> {
    let body = format!("{}\n", refusal.message);
    let out = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.status,
        body.len()
    );
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// `/stream`: a line per interval until the client goes away.
async fn stream_lines(
    stream: &mut TcpStream,
    request: &Request,
    config: &WhoamiConfig,
    client: SocketAddr,
) {
    let interval = request
        .query
        .split('&')
        .find_map(|p| p.strip_prefix("interval_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.clamp(10, 60_000)))
        .unwrap_or(config.stream_interval);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = stream.split();
    let mut tick = tokio::time::interval(interval);
    let mut sink = [0u8; 1024];
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let line = format!("{n} task={} client={client}\n", config.identity.task);
                if writer.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            read = reader.read(&mut sink) => {
                // The client closed (or reset); anything it sends is ignored.
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A server on 127.0.0.1 (tcp and udp on one free port), stopped when dropped.
    struct Server {
        addr: SocketAddr,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    async fn server() -> Server {
        // A port free for both protocols (a free tcp port may be taken for udp: retry).
        let (tcp, udp) = loop {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            if let Ok(udp) = UdpSocket::bind(tcp.local_addr().unwrap()).await {
                break (tcp, udp);
            }
        };
        let addr = tcp.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = WhoamiConfig {
            identity: Identity {
                task: "web.1".into(),
                task_id: "t1".into(),
                service: "web".into(),
                node: "host-a".into(),
                node_id: "n1".into(),
            },
            stream_interval: Duration::from_millis(20),
        };
        tokio::spawn(serve(tcp, Some(udp), config, async move {
            let _ = stopped.await;
        }));
        Server { addr, _stop: stop }
    }

    /// Sends `request` and reads one response (head and a Content-Length body).
    async fn exchange(stream: &mut BufReader<TcpStream>, request: &str) -> (String, String) {
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(
                stream.read_line(&mut line).await.unwrap() > 0,
                "closed in head: {head}"
            );
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
        BufReader::new(TcpStream::connect(addr).await.unwrap())
    }

    #[tokio::test]
    async fn whoami_text_and_json_show_the_client_as_seen() {
        let server = server().await;
        let mut conn = connect(server.addr).await;
        let me = conn.get_ref().local_addr().unwrap();

        let (head, body) = exchange(&mut conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("text/plain"), "{head}");
        assert!(body.contains("task: web.1\n"), "{body}");
        assert!(body.contains("service: web\n"), "{body}");
        assert!(body.contains("node: host-a\n"), "{body}");
        assert!(body.contains(&format!("client: {me}\n")), "{body}");
        assert!(
            body.contains(&format!("server: {}\n", server.addr)),
            "{body}"
        );

        // Same connection (keep-alive), JSON by query.
        let (head, body) = exchange(&mut conn, "GET /any/path?format=json HTTP/1.1\r\n\r\n").await;
        assert!(head.contains("application/json"), "{head}");
        let report: Report = serde_json::from_str(&body).unwrap();
        assert_eq!(report.client, me.to_string());
        assert_eq!(report.task, "web.1");
        assert_eq!(report.node_id, "n1");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        for key in ["task", "service", "node", "node_id", "addresses", "client"] {
            assert!(json.get(key).is_some(), "{key} missing: {body}");
        }
        assert!(json["addresses"].is_array());
        // Loopback addresses are not listed.
        assert!(
            !report.addresses.iter().any(|a| a.starts_with("127.")),
            "{body}"
        );

        // JSON by Accept header; then the server honours Connection: close.
        let (head, body) = exchange(
            &mut conn,
            "GET / HTTP/1.1\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.contains("Connection: close"), "{head}");
        serde_json::from_str::<Report>(&body).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn whoami_udp_datagram_gets_the_report() {
        let server = server().await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = socket.local_addr().unwrap();
        let mut buf = vec![0u8; 65536];
        for (ask, json) in [(&b"hello"[..], false), (&b"json\n"[..], true)] {
            socket.send_to(ask, server.addr).await.unwrap();
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
                    .await
                    .expect("a udp reply")
                    .unwrap();
            assert_eq!(from, server.addr);
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            if json {
                let report: Report = serde_json::from_str(text).unwrap();
                assert_eq!(report.client, me.to_string());
            } else {
                assert!(text.contains(&format!("client: {me}\n")), "{text}");
                assert!(text.contains("task: web.1\n"), "{text}");
            }
        }
    }

    #[tokio::test]
    async fn whoami_survives_garbage_and_oversized_input() {
        let server = server().await;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\x00\xff\xfe garbage\r\n\r\n".to_vec(), "400"),
            (b"GET / HTTP/1.1 extra\r\n\r\n".to_vec(), "400"),
            (b"GET / SPDY/3\r\n\r\n".to_vec(), "505"),
            (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(), "400"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(),
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n".to_vec(),
                "413",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                "501",
            ),
            (vec![b'A'; MAX_HEAD + 100], "431"),
        ];
        for (input, status) in cases {
            let mut conn = TcpStream::connect(server.addr).await.unwrap();
            conn.write_all(&input).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
                .await
                .expect("the server closes after a refusal")
                .unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{:?} -> {answer}",
                String::from_utf8_lossy(&input[..input.len().min(40)])
            );
        }
        // Half a request then a close, and a connection closed at once: no answer needed.
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(b"GET / HTT").await.unwrap();
        drop(conn);
        drop(TcpStream::connect(server.addr).await.unwrap());

        // Still serving, a body is skipped, and a second request on the connection works.
        let mut conn = connect(server.addr).await;
        let (head, _) = exchange(
            &mut conn,
            "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (_, body) = exchange(&mut conn, "GET /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(body, "ok\n");
    }

    #[tokio::test]
    async fn whoami_stream_writes_lines_until_the_client_closes() {
        let server = server().await;
        let mut conn = connect(server.addr).await;
        conn.get_mut()
            .write_all(b"GET /stream?interval_ms=10 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut lines = Vec::new();
        while lines.len() < 10 {
            let mut line = String::new();
            conn.read_line(&mut line).await.unwrap();
            lines.push(line);
        }
        assert!(lines[0].starts_with("HTTP/1.1 200"));
        let body: Vec<_> = lines.iter().skip_while(|l| *l != "\r\n").skip(1).collect();
        assert!(
            body[0].starts_with("1 task=web.1 client=127.0.0.1:"),
            "{body:?}"
        );
        assert!(body[1].starts_with("2 "), "{body:?}");
    }

    #[tokio::test]
    async fn whoami_answers_many_concurrent_connections() {
        let server = server().await;
        let mut clients = Vec::new();
        for _ in 0..200 {
            let addr = server.addr;
            clients.push(tokio::spawn(async move {
                let mut conn = connect(addr).await;
                let me = conn.get_ref().local_addr().unwrap();
                let (_, body) = exchange(&mut conn, "GET / HTTP/1.0\r\n\r\n").await;
                assert!(body.contains(&format!("client: {me}\n")));
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
    }

    #[test]
    fn whoami_head_parsing_table() {
        let r = parse_head(b"GET /a?format=json&x=1 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.path.as_str(), r.keep_alive, r.wants_json),
            ("/a", true, true)
        );
        let r =
            parse_head(b"\r\nHEAD / HTTP/1.1\nAccept: text/html, application/json\n\n").unwrap();
        assert_eq!(
            (r.method.as_str(), r.keep_alive, r.wants_json),
            ("HEAD", true, true)
        );
        let r =
            parse_head(b"GET /?format=text HTTP/1.1\r\nAccept: application/json\r\n\r\n").unwrap();
        assert!(!r.wants_json);
        assert!(parse_head(b"").is_err());
        assert!(parse_head(b"G3T / HTTP/1.1\r\n\r\n").is_err());
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
