//! Applying one [`Op`] over rtnetlink (and `nft` for the masquerade rule), from a thread of the
//! daemon's namespace with a [`Session`] of handles in the namespaces the op names.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::netlink::{Netlink, Session, VxlanParams};
use crate::netns::{At, Netns};
use crate::nft;
use crate::overlay::ids::vxlan_staging_name;
use crate::overlay::linux::observe::{link_name, link_state};
use crate::overlay::model::{BRIDGE_IFNAME, TASK_GATEWAY_IFNAME, VXLAN_IFNAME};
use crate::overlay::observed::LinkKind;
use crate::overlay::op::Op;
use crate::sysctl;
use crate::types::{IfName, Ipv4Cidr, Mac};

fn ifname(name: &str) -> IfName {
    IfName::new(name).expect("constant interface names are valid")
}

fn named(netns: &str) -> At {
    At::Netns(netns.to_owned())
}

pub(super) async fn apply_one(s: &mut Session<'_>, op: &Op) -> Result<()> {
    let vxlan0 = ifname(VXLAN_IFNAME);
    let br0 = ifname(BRIDGE_IFNAME);
    match op {
        Op::RemoveSandbox { netns } => {
            if let Some(r) = s.at_if_exists(&named(netns))? {
                // Delete the links first: a veth's peer in another namespace goes at once,
                // not when the kernel gets round to destroying this namespace.
                for link in r.dump_links().await? {
                    if let Some(name) = link_name(&link)
                        && name.as_str() != "lo"
                    {
                        r.remove_link(&name).await?;
                    }
                }
            }
            s.forget(netns);
            Netns::remove(netns)
        }
        Op::RemoveLink { at, ifname } => match s.at_if_exists(at)? {
            Some(r) => r.remove_link(ifname).await,
            None => Ok(()),
        },
        Op::RemoveDefaultRoute { netns } => match s.at_if_exists(&named(netns))? {
            Some(r) => r.remove_default_route().await,
            None => Ok(()),
        },
        Op::RemoveFdb { netns, mac, vtep } => match s.at_if_exists(&named(netns))? {
            Some(r) => {
                r.remove_fdb(&vxlan0, mac.octets(), *vtep).await?;
                // And what br0 learned from the endpoint's frames, so no listing shows it.
                r.remove_learned_fdb(&vxlan0, mac.octets()).await
            }
            None => Ok(()),
        },
        Op::RemoveNeighbor { netns, ip } => match s.at_if_exists(&named(netns))? {
            Some(r) => r.remove_neighbor(&vxlan0, *ip).await,
            None => Ok(()),
        },
        Op::RemoveMasquerade { table } => nft::remove_table(s.home_ns(), table),
        Op::EnsureGatewayBridge {
            bridge,
            address,
            mtu,
        } => {
            let r = s.home();
            r.ensure_bridge(bridge).await?;
            r.set_mtu(bridge, *mtu).await?;
            r.set_only_address(bridge, *address).await?;
            r.set_up(bridge).await?;
            sysctl::write(sysctl::IP_FORWARD, "1")
        }
        Op::EnsureMasquerade(rule) => nft::ensure_masquerade(s.home_ns(), rule),
        Op::CreateNetworkSandbox {
            netns,
            gateway,
            mtu,
        } => {
            Netns::ensure(netns)?;
            let r = s.at(&named(netns))?;
            r.ensure_bridge(&br0).await?;
            r.set_mtu(&br0, *mtu).await?;
            r.set_only_address(&br0, *gateway).await?;
            r.set_up(&br0).await
        }
        Op::CreateVxlan { netns, vxlan } => {
            s.open_named(netns)?;
            let (ns, r) = s.opened(netns);
            let host = s.home();
            if r.link_index(&vxlan0).await?.is_none() {
                // Created here so its UDP socket lives in the daemon's namespace, then moved.
                let staging = vxlan_staging_name(vxlan.vni);
                if let Some(found) = host.get_link(&staging).await? {
                    // One left by a crash between create and move is ours; anything else of
                    // that name is not, and must not be moved away.
                    if link_state(&found, &HashMap::new()).kind != LinkKind::Vxlan {
                        return Err(Error::Conflict {
                            what: format!("link {staging} in {}", s.home_ns().name()),
                            reason: "exists and is not a vxlan device staged by mesh",
                        });
                    }
                    host.remove_link(&staging).await?;
                }
                let params = VxlanParams {
                    vni: vxlan.vni.get(),
                    port: vxlan.port,
                    local: vxlan.local,
                    mtu: vxlan.mtu,
                    learning: false,
                    proxy: true,
                };
                host.ensure_vxlan(&staging, params).await?;
                host.move_link(&staging, ns, &vxlan0).await?;
            }
            r.set_mtu(&vxlan0, vxlan.mtu).await?;
            r.set_controller(&vxlan0, &br0).await?;
            r.set_up(&vxlan0).await
        }
        Op::AddNeighbor { netns, ip, mac } => {
            s.at(&named(netns))?
                .replace_neighbor(&vxlan0, *ip, mac.octets())
                .await
        }
        Op::AddFdb { netns, mac, vtep } => {
            s.at(&named(netns))?
                .replace_fdb(&vxlan0, mac.octets(), *vtep)
                .await
        }
        Op::CreateTaskSandbox { netns } => {
            Netns::ensure(netns)?;
            s.at(&named(netns))?.set_up(&ifname("lo")).await
        }
        Op::AttachEndpoint {
            task_netns,
            ifname,
            addr,
            mac,
            mtu,
            network_netns,
            port,
        } => {
            s.open_named(task_netns)?;
            s.open_named(network_netns)?;
            let (task_ns, task) = s.opened(task_netns);
            let (network_ns, network) = s.opened(network_netns);
            s.home()
                .ensure_veth_pair_named(ifname, task_ns, task, port, network_ns)
                .await?;
            configure_task_end(task, ifname, *mac, *mtu, *addr).await?;
            network.set_mtu(port, *mtu).await?;
            network.set_controller(port, &br0).await?;
            network.set_up(port).await
        }
        Op::AttachGateway {
            task_netns,
            addr,
            mac,
            mtu,
            port,
            bridge,
            gateway,
        } => {
            let gw0 = self::ifname(TASK_GATEWAY_IFNAME);
            s.open_named(task_netns)?;
            let (task_ns, task) = s.opened(task_netns);
            let host = s.home();
            host.ensure_veth_pair_named(&gw0, task_ns, task, port, s.home_ns())
                .await?;
            configure_task_end(task, &gw0, *mac, *mtu, *addr).await?;
            task.replace_default_route(*gateway, &gw0).await?;
            host.set_mtu(port, *mtu).await?;
            host.set_controller(port, bridge).await?;
            host.set_isolated(port, true).await?;
            host.set_up(port).await
        }
    }
}

/// The task end of a veth: MAC, MTU, exactly one address, up.
async fn configure_task_end(
    r: &Netlink,
    name: &IfName,
    mac: Mac,
    mtu: u32,
    addr: Ipv4Cidr,
) -> Result<()> {
    r.set_mac(name, mac.octets()).await?;
    r.set_mtu(name, mtu).await?;
    r.set_only_address(name, addr).await?;
    r.set_up(name).await
}
