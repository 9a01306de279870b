//! What the DNS servers forward to and how long they wait: [`DnsConfig`], usually read from
//! the host's `/etc/resolv.conf` when the agent starts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::error::{DnsError, Result};

/// Where the host keeps its resolver configuration.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Upstream resolvers and forwarding limits, shared by every task's server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Upstream resolvers, tried in order. Empty: names that are not ours get SERVFAIL at once.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets (UDP retransmits included) before the next one is tried.
    pub upstream_timeout: Duration,
    /// Bound on forwarding one query, all upstreams together; then SERVFAIL. Below the 5 s a
    /// glibc client waits by default, so the client hears SERVFAIL rather than nothing.
    pub forward_deadline: Duration,
    /// Search domains: `<name>.<domain>` is answered as `<name>` when that is a mesh name.
    pub search_domains: Vec<String>,
    /// Queries one task may have upstream at once; beyond that they get SERVFAIL, so one
    /// task cannot hold every socket of the agent.
    pub max_forwards_per_task: usize,
}

impl DnsConfig {
    /// Forwards to `upstreams` (port 53 unless given), with the default limits.
    pub fn with_upstreams(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            upstream_timeout: Duration::from_secs(2),
            forward_deadline: Duration::from_secs(4),
            search_domains: Vec::new(),
            max_forwards_per_task: 256,
        }
    }

    /// The configuration of the host: [`DnsConfig::from_resolv_conf`] of `/etc/resolv.conf`.
    pub fn from_host() -> Result<Self> {
        Self::from_resolv_conf_file(Path::new(HOST_RESOLV_CONF))
    }

    /// [`DnsConfig::from_resolv_conf`] of the file at `path`.
    pub fn from_resolv_conf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_resolv_conf(&text))
    }

    /// Upstreams and search domains of a resolv.conf text. Loopback nameservers (127.0.0.0/8,
    /// `::1`: a stub such as systemd-resolved on the host) are skipped: forwarding happens from
    /// the task's namespace, where the host's loopback is not reachable. Unparsable lines are
    /// ignored, as the C library does.
    pub fn from_resolv_conf(text: &str) -> Self {
        let mut upstreams = Vec::new();
        let mut search = Vec::new();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped IPv6 address (`fe80::1%eth0`) does not parse: skipped.
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
                        && !ip.is_loopback()
                        && !ip.is_unspecified()
                    {
                        upstreams.push(SocketAddr::new(ip, 53));
                    }
                }
                // The last `search` or `domain` line wins, as in the C library.
                Some("search") | Some("domain") => {
                    search = words.map(str::to_owned).collect();
                }
                _ => {}
            }
        }
        let mut config = Self::with_upstreams(upstreams);
        config.search_domains = search;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_skips_loopback_and_keeps_order() {
        let text = "\
# generated
nameserver 127.0.0.53
nameserver 10.1.2.3   # office
nameserver ::1
nameserver 2001:db8::53
nameserver fe80::1%eth0
nameserver not-an-ip
nameserver 0.0.0.0
nameserver 192.0.2.1
domain old.example
search corp.example lab.example
options edns0 trust-ad
";
        let c = DnsConfig::from_resolv_conf(text);
        let want: Vec<SocketAddr> = ["10.1.2.3:53", "[2001:db8::53]:53", "192.0.2.1:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(c.upstreams, want);
        assert_eq!(c.search_domains, ["corp.example", "lab.example"]);
    }

    #[test]
    fn resolv_conf_with_only_a_local_stub_has_no_upstream() {
        let c = DnsConfig::from_resolv_conf("nameserver 127.0.0.53\noptions edns0\n");
        assert!(c.upstreams.is_empty());
        assert!(c.search_domains.is_empty());
        assert_eq!(
            DnsConfig::from_resolv_conf(""),
            DnsConfig::with_upstreams(vec![])
        );
    }

    #[test]
    fn missing_resolv_conf_names_the_path() {
        let err = DnsConfig::from_resolv_conf_file(Path::new("/nonexistent/resolv.conf"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "read /nonexistent/resolv.conf");
    }
}
