//! IPv4 routes (any table) and fwmark policy rules.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::RouteMessageBuilder;

use super::handle::{Netlink, ok_if};
use crate::error::Result;
use crate::types::{IfName, Ipv4Cidr};

/// The main routing table's id.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// One IPv4 unicast route as the kernel lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    /// The destination; `None` for the default route.
    pub dst: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    /// Index of the output interface.
    pub oif: Option<u32>,
}

impl Netlink {
    /// Every IPv4 unicast route of the namespace, in every table.
    pub async fn ipv4_routes(&self) -> Result<Vec<Route>> {
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list routes", "*", source))?;
        let mut routes = Vec::new();
        for m in messages
            .iter()
            .filter(|m| m.header.kind == RouteType::Unicast)
        {
            let mut route = Route {
                table: u32::from(m.header.table),
                dst: None,
                gateway: None,
                oif: None,
            };
            for a in &m.attributes {
                match a {
                    // The attribute carries tables above 255.
                    RouteAttribute::Table(t) => route.table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(dst))
                        if m.header.destination_prefix_length > 0 =>
                    {
                        route.dst = Some(Ipv4Cidr::new(*dst, m.header.destination_prefix_length)?);
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => route.gateway = Some(*gw),
                    RouteAttribute::Oif(index) => route.oif = Some(*index),
                    _ => {}
                }
            }
            routes.push(route);
        }
        Ok(routes)
    }

    /// The gateway of the IPv4 default route of the main table, if there is one.
    pub async fn default_gateway(&self) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .filter(|r| r.table == MAIN_TABLE && r.dst.is_none())
            .find_map(|r| r.gateway))
    }

    /// Sets the IPv4 default route of the main table to `via` out of `dev`.
    pub async fn replace_default_route(&self, via: Ipv4Addr, dev: &IfName) -> Result<()> {
        self.replace_route(MAIN_TABLE, None, via, dev).await
    }

    /// Removes the IPv4 default route of the main table, whoever added it; absent is success.
    pub async fn remove_default_route(&self) -> Result<()> {
        self.remove_route(MAIN_TABLE, None).await
    }

    /// Sets the route to `dst` (the default route if `None`) in routing table `table` to `via`
    /// out of `dev`, replacing any route to `dst` there.
    pub async fn replace_route(
        &self,
        table: u32,
        dst: Option<Ipv4Cidr>,
        via: Ipv4Addr,
        dev: &IfName,
    ) -> Result<()> {
        let index = self.require_index(dev).await?;
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new().table_id(table);
        if let Some(dst) = dst {
            msg = msg.destination_prefix(dst.addr(), dst.prefix_len());
        }
        let msg = msg.gateway(via).output_interface(index).build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| self.err("replace route via", dev, source))
    }

    /// Removes the route to `dst` (the default route if `None`) of routing table `table`,
    /// whoever added it; absent is success.
    pub async fn remove_route(&self, table: u32, dst: Option<Ipv4Cidr>) -> Result<()> {
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new().table_id(table);
        if let Some(dst) = dst {
            msg = msg.destination_prefix(dst.addr(), dst.prefix_len());
        }
        let msg = msg
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .build();
        let result = self.handle.route().del(msg).execute().await;
        let what = dst.map_or_else(|| "default".to_string(), |d| d.to_string());
        ok_if(result, &[libc::ESRCH, libc::ENOENT])
            .map_err(|source| self.err("delete route", format!("{what} table {table}"), source))
    }

    /// The IPv4 policy rules at `priority` that match a fwmark: mark -> table looked up.
    pub async fn fwmark_rules(&self, priority: u32) -> Result<BTreeMap<u32, u32>> {
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.err("list rules", "*", source))?;
        let mut out = BTreeMap::new();
        for r in &rules {
            let (mut prio, mut mark, mut table) = (None, None, u32::from(r.header.table));
            for a in &r.attributes {
                match a {
                    RuleAttribute::Priority(p) => prio = Some(*p),
                    RuleAttribute::FwMark(m) => mark = Some(*m),
                    RuleAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if let (Some(p), Some(m)) = (prio, mark)
                && p == priority
            {
                out.insert(m, table);
            }
        }
        Ok(out)
    }

    /// Adds the policy rule `fwmark <mark> lookup <table>` at `priority`; present is success.
    pub async fn add_fwmark_rule(&self, mark: u32, table: u32, priority: u32) -> Result<()> {
        let result = self
            .handle
            .rule()
            .add()
            .v4()
            .fw_mark(mark)
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable)
            .execute()
            .await;
        ok_if(result, &[libc::EEXIST]).map_err(|source| self.err("add rule", mark, source))
    }

    /// Removes the policy rule for `mark` at `priority`; absent is success.
    pub async fn remove_fwmark_rule(&self, mark: u32, priority: u32) -> Result<()> {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.attributes.push(RuleAttribute::FwMark(mark));
        msg.attributes.push(RuleAttribute::Priority(priority));
        let result = self.handle.rule().del(msg).execute().await;
        ok_if(result, &[libc::ENOENT]).map_err(|source| self.err("delete rule", mark, source))
    }
}
