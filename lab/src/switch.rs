//! The switch every host of a lab is plugged into: a bridge in the switch namespace, the
//! underlay subnet 10.77.0.0/24 (node1 is .11), and how a namespace is plugged in (a veth
//! pair created straight inside the two namespaces, nothing in the root namespace).

use std::net::Ipv4Addr;

use anyhow::Result;
use mesh_dataplane::link::{self, IfName, Ipv4Cidr};
use mesh_dataplane::netns::Netns;

/// Prefix length of the hosts' underlay subnet 10.77.0.0/24.
pub const SUBNET_PREFIX_LEN: u8 = 24;
/// The most hosts a lab holds (10.77.0.11 to 10.77.0.250).
pub const MAX_HOSTS: usize = 240;
/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";
/// Each host's interface to the switch.
const HOST_IFNAME: &str = "eth0";

/// Connects `ns` to the switch's bridge: `eth0` in `ns` with `ip`/24, its peer `port` in the
/// switch namespace; `lo` up in `ns`.
pub(crate) fn plug(switch: &Netns, ns: &Netns, port: &IfName, ip: Ipv4Addr) -> Result<()> {
    let bridge = IfName::new(BRIDGE)?;
    let eth0 = IfName::new(HOST_IFNAME)?;
    let lo = IfName::new("lo")?;
    link::in_netns(switch, async |nl| {
        nl.ensure_veth_pair(&eth0, ns, port, switch).await?;
        nl.set_controller(port, &bridge).await?;
        nl.set_up(port).await
    })?;
    let cidr = Ipv4Cidr::new(ip, SUBNET_PREFIX_LEN)?;
    link::in_netns(ns, async |nl| {
        nl.set_up(&lo).await?;
        nl.ensure_address(&eth0, cidr).await?;
        nl.set_up(&eth0).await
    })?;
    Ok(())
}

/// The underlay address of host `n` (1-based): node1 is 10.77.0.11.
pub fn host_ip(n: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_HOSTS).contains(&n),
        "host number {n} outside 1..={MAX_HOSTS}"
    );
    Ipv4Addr::new(10, 77, 0, 10 + n as u8)
}

/// Brings the switch up in `switch`: `lo` and the bridge.
pub(crate) fn set_up_switch(switch: &Netns) -> Result<()> {
    let bridge = IfName::new(BRIDGE)?;
    let lo = IfName::new("lo")?;
    link::in_netns(switch, async |nl| {
        nl.set_up(&lo).await?;
        nl.ensure_bridge(&bridge).await?;
        nl.set_up(&bridge).await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_start_at_11() {
        assert_eq!(host_ip(1), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(host_ip(MAX_HOSTS), Ipv4Addr::new(10, 77, 0, 250));
    }
}
