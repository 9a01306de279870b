//! Real traffic from inside a network namespace (a task's, usually): HTTP requests to `mesh
//! whoami`, a long-lived `/stream`, DNS queries to the task's resolver, ping.
//!
//! The test process itself is the client: each call runs on a thread that entered the
//! namespace ([`Netns::run`]), so the sockets are the task's and its routes, load balancer
//! and DNS apply. Nothing here needs a tool inside the task (no curl); only [`ping`] spawns
//! `ping`.
//!
//! Every operation is bounded by a timeout: a black-holed backend is a failed request, never
//! a stuck test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
pub use mesh_node::whoami::Report;

use crate::Netns;

/// The port every test service's `mesh whoami` listens on.
pub const WHOAMI_PORT: u16 = 80;

/// Time allowed to connect, and to each read, of one request (one-off probes, where a
/// negative answer is expected too).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Time allowed to connect, and to each read, of each request of a loop or a burst: longer
/// than the kernel's first SYN retransmission (1 s), so a request a real client would have
/// seen succeed, only late, does not count as failed.
pub const LOOP_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /?format=json` on a fresh connection to `addr`, from the current thread's namespace:
/// the report of the task that answered.
fn get_report(addr: SocketAddrV4, timeout: Duration) -> Result<Report> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
        .with_context(|| format!("connect to {addr}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(b"GET /?format=json HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n")
        .with_context(|| format!("send a request to {addr}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .with_context(|| format!("read the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} answered no HTTP head: {text:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{addr} answered {:?}",
        head.lines().next().unwrap_or_default()
    );
    serde_json::from_str(body).with_context(|| format!("{addr} answered {body:?}"))
}

/// One HTTP request from inside `ns` to `addr` (see [`get_report`]).
pub fn http_get(ns: &Netns, addr: SocketAddrV4) -> Result<Report> {
    ns.run(|| get_report(addr, REQUEST_TIMEOUT))?
}

/// `count` requests in a row from inside `ns` to `addr`, each on a new connection: every
/// outcome, in order.
pub fn http_burst(ns: &Netns, addr: SocketAddrV4, count: usize) -> Result<Outcomes> {
    ns.run(|| {
        Outcomes(
            (0..count)
                .map(|_| {
                    let at = Instant::now();
                    let result = get_report(addr, LOOP_TIMEOUT).map_err(|e| format!("{e:#}"));
                    Outcome {
                        at,
                        took: at.elapsed(),
                        result,
                    }
                })
                .collect(),
        )
    })
    .map_err(Into::into)
}

/// One request and how it went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it started.
    pub at: Instant,
    pub took: Duration,
    /// The report, or why there is none.
    pub result: Result<Report, String>,
}

/// Requests made, in order.
#[derive(Debug, Clone, Default)]
pub struct Outcomes(pub Vec<Outcome>);

impl Outcomes {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The failed requests.
    pub fn failures(&self) -> Vec<&Outcome> {
        self.0.iter().filter(|o| o.result.is_err()).collect()
    }

    /// How many answers each task id gave.
    pub fn by_task(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for o in &self.0 {
            if let Ok(r) = &o.result {
                *counts.entry(r.task_id.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Those that started at or after `t`.
    pub fn since(&self, t: Instant) -> Outcomes {
        Outcomes(self.0.iter().filter(|o| o.at >= t).cloned().collect())
    }

    /// A short account for messages: totals, answers per task, and the first failures with
    /// when they happened relative to `origin`.
    pub fn summary(&self, origin: Instant) -> String {
        let failures = self.failures();
        let mut out = format!(
            "{} requests, {} failed; answers by task {:?}",
            self.len(),
            failures.len(),
            self.by_task()
        );
        for f in failures.iter().take(10) {
            let at = f.at.saturating_duration_since(origin);
            out.push_str(&format!(
                "\n  at {at:?} (took {:?}): {}",
                f.took,
                f.result.as_ref().err().map(String::as_str).unwrap_or("")
            ));
        }
        if failures.len() > 10 {
            out.push_str(&format!("\n  ... and {} more", failures.len() - 10));
        }
        out
    }
}

/// A client sending requests in a loop from inside a namespace, on a thread of its own, each
/// on a new connection (so each one goes through the load balancer), until stopped.
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl RequestLoop {
    /// Pause between two requests: about 50 requests a second, so that two tests on a
    /// 2-core machine leave the daemons their share of the CPU.
    pub const PACE: Duration = Duration::from_millis(20);

    /// Starts requesting `addr` from inside `ns`.
    pub fn start(ns: Netns, addr: SocketAddrV4) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (Arc::clone(&stop), Arc::clone(&seen));
        let thread = std::thread::spawn(move || -> Result<()> {
            ns.run(|| {
                while !stop2.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let result = get_report(addr, LOOP_TIMEOUT).map_err(|e| format!("{e:#}"));
                    let outcome = Outcome {
                        at,
                        took: at.elapsed(),
                        result,
                    };
                    lock(&seen2).push(outcome);
                    // Pacing, not waiting for a condition.
                    std::thread::sleep(Self::PACE);
                }
            })?;
            Ok(())
        });
        RequestLoop {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// What was seen so far.
    pub fn outcomes(&self) -> Outcomes {
        Outcomes(lock(&self.seen).clone())
    }

    /// Stops the loop (after the request in flight) and returns every outcome.
    pub fn stop(mut self) -> Result<Outcomes> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the request loop panicked"))??;
        }
        Ok(self.outcomes())
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A long-lived `GET /stream` connection from inside a namespace, read on a thread of its
/// own: when each line arrived.
pub struct Stream {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    ended: Arc<Mutex<Option<String>>>,
    _thread: JoinHandle<()>,
}

impl Stream {
    /// Silence after which the reader gives the connection up: longer than TCP's
    /// retransmission backoff after an outage of a few seconds, so a connection that survives
    /// a stall is not given up for dead.
    pub const STALL: Duration = Duration::from_secs(12);

    /// Opens `/stream?interval_ms=INTERVAL` on `addr` from inside `ns` and starts reading.
    /// Fails if the connection or the `200` head does not come.
    pub fn open(ns: &Netns, addr: SocketAddrV4, interval: Duration) -> Result<Stream> {
        let conn = ns.run(|| -> Result<TcpStream> {
            let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(addr), REQUEST_TIMEOUT)
                .with_context(|| format!("connect to {addr}"))?;
            let req = format!(
                "GET /stream?interval_ms={} HTTP/1.1\r\nHost: mesh\r\n\r\n",
                interval.as_millis()
            );
            conn.write_all(req.as_bytes())?;
            Ok(conn)
        })??;
        // No line for this long ends the reading: the connection is taken as dead.
        conn.set_read_timeout(Some(Self::STALL.max(interval * 10)))?;
        let mut reader = BufReader::new(conn);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .with_context(|| format!("read the /stream head from {addr}"))?;
        ensure!(
            status.starts_with("HTTP/1.1 200"),
            "{addr} answered {status:?} to /stream"
        );
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            if header.trim().is_empty() {
                break;
            }
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (lines2, ended2) = (Arc::clone(&lines), Arc::clone(&ended));
        let thread = std::thread::spawn(move || {
            loop {
                let mut line = String::new();
                let why = match reader.read_line(&mut line) {
                    Ok(0) => "closed by the server".to_owned(),
                    Ok(_) => {
                        lock(&lines2).push((Instant::now(), line.trim_end().to_owned()));
                        continue;
                    }
                    Err(e) => format!("read failed: {e}"),
                };
                *lock(&ended2) = Some(why);
                return;
            }
        });
        Ok(Stream {
            lines,
            ended,
            _thread: thread,
        })
    }

    /// Lines received so far, with when.
    pub fn lines(&self) -> Vec<(Instant, String)> {
        lock(&self.lines).clone()
    }

    /// Why the stream ended, if it did.
    pub fn ended(&self) -> Option<String> {
        lock(&self.ended).clone()
    }

    /// The longest time between two lines (or between `since` and the first line after it,
    /// and between the last line and now), counting only from `since`.
    pub fn longest_gap_since(&self, since: Instant) -> Duration {
        let mut prev = since;
        let mut gap = Duration::ZERO;
        for (t, _) in self.lines().into_iter().filter(|(t, _)| *t >= since) {
            gap = gap.max(t - prev);
            prev = t;
        }
        gap.max(prev.elapsed())
    }
}

/// What a DNS server answered to an A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The response code (0 NOERROR, 3 NXDOMAIN...).
    pub rcode: u8,
    /// The A records, in the order given.
    pub addrs: Vec<Ipv4Addr>,
}

/// The task resolver every task namespace has.
pub const TASK_RESOLVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);

/// Asks the task resolver (127.0.0.11:53) of namespace `ns` for the A records of `name`, over
/// UDP, as the task's own resolver would.
pub fn resolve(ns: &Netns, name: &str) -> Result<DnsAnswer> {
    ns.run(|| query_a(TASK_RESOLVER, name))?
}

/// One A query of `name` to `server`, answer parsed (a minimal hand-built DNS client).
pub fn query_a(server: SocketAddrV4, name: &str) -> Result<DnsAnswer> {
    let id: u16 = (std::process::id() as u16) ^ (Instant::now().elapsed().subsec_nanos() as u16);
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        ensure!(
            !label.is_empty() && label.len() < 64,
            "bad DNS name {name:?}"
        );
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    sock.send_to(&q, server)
        .with_context(|| format!("send a DNS query to {server}"))?;
    let mut buf = [0u8; 1500];
    let n = sock
        .recv(&mut buf)
        .with_context(|| format!("no DNS answer from {server} for {name}"))?;
    parse_a_answer(&buf[..n], id).with_context(|| format!("DNS answer for {name}"))
}

/// Parses the answer to an A query with id `id`.
fn parse_a_answer(msg: &[u8], id: u16) -> Result<DnsAnswer> {
    ensure!(msg.len() >= 12, "short DNS message ({} bytes)", msg.len());
    let u16_at = |i: usize| -> Result<u16> {
        msg.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .context("truncated DNS message")
    };
    ensure!(u16_at(0)? == id, "DNS answer with another id");
    ensure!(msg[2] & 0x80 != 0, "not a DNS response");
    let rcode = msg[3] & 0x0f;
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    let skip_name = |mut at: usize| -> Result<usize> {
        loop {
            let len = *msg.get(at).context("truncated DNS name")?;
            if len & 0xc0 == 0xc0 {
                return Ok(at + 2);
            }
            at += 1;
            if len == 0 {
                return Ok(at);
            }
            at += len as usize;
        }
    };
    for _ in 0..qd {
        at = skip_name(at)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        at = skip_name(at)?;
        let (rtype, len) = (u16_at(at)?, u16_at(at + 8)? as usize);
        at += 10;
        let data = msg.get(at..at + len).context("truncated DNS record")?;
        if rtype == 1 && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += len;
    }
    Ok(DnsAnswer { rcode, addrs })
}

/// Whether one `ping` from inside `ns` to `ip` gets an answer within a second.
pub fn ping(ns: &Netns, ip: Ipv4Addr) -> Result<bool> {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "1", "-n", "-q", &ip.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ns.enter_on_exec(&mut cmd)?;
    let status = cmd.status().context("run ping (iputils-ping)")?;
    Ok(status.success())
}

/// Whether a TCP connection from inside `ns` to `addr` is established within
/// [`REQUEST_TIMEOUT`]; the error, if not.
pub fn tcp_connect(ns: &Netns, addr: SocketAddrV4) -> Result<std::result::Result<(), String>> {
    Ok(ns.run(|| {
        TcpStream::connect_timeout(&SocketAddr::V4(addr), REQUEST_TIMEOUT)
            .map(drop)
            .map_err(|e| e.to_string())
    })?)
}

/// A TCP listener bound inside `ns` at `addr`, accepting (and closing) connections on a
/// thread of its own; it counts them. For egress targets.
pub struct Listener {
    pub addr: SocketAddrV4,
    accepted: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Listener {
    pub fn bind(ns: &Netns, addr: SocketAddrV4) -> Result<Listener> {
        let listener = ns
            .run(|| std::net::TcpListener::bind(addr))?
            .with_context(|| format!("bind {addr} in {}", ns.name()))?;
        let addr = match listener.local_addr()? {
            SocketAddr::V4(a) => a,
            other => bail!("bound {other}, not IPv4"),
        };
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&accepted);
        // The thread ends with the process; the socket stays in `ns`.
        std::thread::spawn(move || {
            for (_, peer) in std::iter::from_fn(|| listener.accept().ok()) {
                lock(&seen).push(peer);
            }
        });
        Ok(Listener { addr, accepted })
    }

    /// The peers accepted so far.
    pub fn accepted(&self) -> Vec<SocketAddr> {
        lock(&self.accepted).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_answers_are_parsed_with_compressed_names() {
        let msg = [
            0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0, // header: 1 question, 2 answers
            3, b'a', b'p', b'i', 0, 0, 1, 0, 1, // api A IN
            0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 2, // api A 10.0.0.2
            0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 3, // api A 10.0.0.3
        ];
        let a = parse_a_answer(&msg, 0x1234).unwrap();
        assert_eq!(a.rcode, 0);
        assert_eq!(
            a.addrs,
            [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
        let nx = [0x12, 0x34, 0x81, 0x83, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_a_answer(&nx, 0x1234).unwrap().rcode, 3);
        assert!(parse_a_answer(&nx, 0x4321).is_err());
    }
}
