//! VXLAN devices.

use std::net::Ipv4Addr;

use rtnetlink::LinkVxlan;

use super::handle::{Netlink, ok_if};
use crate::error::Result;
use crate::types::IfName;

/// The configuration of a VXLAN device to create.
#[derive(Clone, Copy, Debug)]
pub struct VxlanParams {
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mtu: u32,
    pub learning: bool,
    pub proxy: bool,
}

impl Netlink {
    /// Creates the VXLAN device `name` here (success if a link of that name exists; it is not
    /// checked to be this one).
    pub async fn ensure_vxlan(&self, name: &IfName, p: VxlanParams) -> Result<()> {
        let msg = LinkVxlan::new(name.as_str(), p.vni)
            .port(p.port)
            .local(p.local)
            .learning(p.learning)
            .proxy(p.proxy)
            .mtu(p.mtu)
            .build();
        let result = self.handle.link().add(msg).execute().await;
        ok_if(result, &[libc::EEXIST]).map_err(|source| self.err("add vxlan", name, source))
    }
}
