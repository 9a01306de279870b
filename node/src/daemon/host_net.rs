//! What `mesh init` learns of its host's IPv4 networking: its routes (from the kernel's
//! routing table of the daemon's namespace) and its DNS resolvers, so no overlay takes their
//! addresses.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

/// The routes of the main table, read from `/proc/net/route` (the default route included;
/// callers leave it out). Unreadable lines are skipped.
pub fn routes() -> Vec<Ipv4Net> {
    device_routes().into_iter().map(|(_, net)| net).collect()
}

/// [`routes`] with the interface each goes through.
pub fn device_routes() -> Vec<(String, Ipv4Net)> {
    std::fs::read_to_string("/proc/net/route")
        .map(|text| parse_routes(&text))
        .unwrap_or_default()
}

fn parse_routes(text: &str) -> Vec<(String, Ipv4Net)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let dst = u32::from_str_radix(cols.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(cols.get(7)?, 16).ok()?;
            // The file holds addresses in the kernel's (little-endian) byte order.
            let dst = Ipv4Addr::from(dst.swap_bytes());
            let prefix = mask.count_ones() as u8;
            let net = Ipv4Net::new(dst, prefix).ok()?.trunc();
            Some((cols.first()?.to_string(), net))
        })
        .collect()
}

/// The host's IPv4 DNS resolvers, from its resolv.conf.
pub fn resolvers() -> Vec<Ipv4Addr> {
    crate::dns::DnsConfig::from_host()
        .map(|c| {
            c.upstreams
                .iter()
                .filter_map(|a| match a.ip() {
                    IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_from_the_kernels_table() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
garbage line\n";
        let got: Vec<String> = parse_routes(text)
            .iter()
            .map(|(dev, net)| format!("{net} {dev}"))
            .collect();
        assert_eq!(
            got,
            [
                "0.0.0.0/0 eth0",
                "10.0.0.0/24 eth0",
                "172.17.0.0/16 docker0"
            ]
        );
    }
}
