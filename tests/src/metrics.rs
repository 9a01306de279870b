//! Scraping a daemon's metrics endpoint (`mesh daemon --metrics-addr`) from inside its host,
//! and reading the scrape with a parser of the Prometheus text format that is not the
//! daemon's own encoder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use prometheus_parse::Value;

use crate::Host;

/// Where the tests' daemons serve their metrics, each inside its own host.
pub const METRICS_ADDR: &str = "127.0.0.1:9323";

/// Bound on one scrape (connect, request, response).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted.
const MAX_RESPONSE: u64 = 4 * 1024 * 1024;

/// A daemon config: `base` with the metrics endpoint at [`METRICS_ADDR`].
pub fn with_metrics(base: &str) -> String {
    format!("{base}\n[metrics]\naddr = \"{METRICS_ADDR}\"\n")
}

/// One parsed scrape.
pub struct Scrape {
    /// The text as served.
    pub text: String,
    parsed: prometheus_parse::Scrape,
}

impl Scrape {
    /// Parses Prometheus text-format `text`.
    pub fn parse(text: String) -> Result<Scrape> {
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .with_context(|| format!("the scrape does not parse:\n{text}"))?;
        Ok(Scrape { text, parsed })
    }

    /// Whether a family of that name was described (`# TYPE`).
    pub fn has_family(&self, name: &str) -> bool {
        self.parsed.docs.contains_key(name)
    }

    /// The value of the sample `name` carrying every label of `labels` (a histogram gives
    /// its count); `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.parsed
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                Value::Summary(_) => f64::NAN,
            })
    }
}

/// `GET path` on `addr` from inside `host`: the status code and the body.
pub fn http_get(host: &Host, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    host.run(move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
            .with_context(|| format!("connect to {addr}"))?;
        s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
        s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .with_context(|| format!("read the answer of {addr}"))?;
        let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("no end of headers in {text:?}");
        };
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_owned()))
    })?
}

/// `GET /metrics` from inside `host` on [`METRICS_ADDR`], parsed.
pub fn scrape(host: &Host) -> Result<Scrape> {
    let addr = METRICS_ADDR.parse().expect("a socket address");
    let (status, body) = http_get(host, addr, "/metrics")?;
    ensure!(
        status == 200,
        "GET /metrics on {}: {status} {body}",
        host.name()
    );
    Scrape::parse(body)
}
