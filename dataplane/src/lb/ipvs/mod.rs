//! The IPVS load balancer ([`IpvsLb`]): what Swarm uses, driven over generic netlink.
//!
//! # Objects, per namespace
//! | object | what |
//! |---|---|
//! | IPVS virtual service `fwmark <vip as u32>`, scheduler `rr`, no persistence | one per VIP that has backends |
//! | its destinations: each backend IP, port 0, masquerade (NAT), weight 1 | port 0 keeps the client's destination port |
//! | `table ip mesh_lb`: `services` map, `mark_output` chain (route, output, mangle), chain `svc_<vip>` | sets `meta mark` to the VIP's fwmark, or rejects when the VIP has no backends (see [`super::nft`]) |
//! | IPVS timeouts (`SET_CONFIG`) | TCP 86400 s, TCP FIN 120 s, UDP 300 s by default ([`IpvsTimeouts`]) instead of 900/120/300 |
//! | sysctls `net.ipv4.vs.expire_nodest_conn=1`, `expire_quiescent_template=1` | a flow whose destination was removed is dropped on its next packet and rescheduled, instead of being black-holed |
//!
//! The mark rule runs at the mangle priority of the output hook, before IPVS's own output hook
//! (NAT_DST + 2), which matches the fwmark service and rewrites the destination to a backend;
//! the reply is un-NATed by IPVS on the way in. Every TCP and UDP port of the VIP is served
//! (a fwmark service has no port).
//!
//! # Idle connections
//! IPVS keeps its own connection table with its own timeouts: 900 s for an established TCP
//! connection by default, which is what cuts idle connections behind Swarm's VIPs
//! (moby#31208). [`IpvsLb::apply`] sets the namespace's timeouts from [`IpvsTimeouts`] (one
//! day for TCP by default) every time it runs; [`read_timeouts`] reads them back.
//!
//! # Order of a change
//! Additions first (services, destinations), then the nftables transaction (mark or reject),
//! then deletions (destinations, services): a connection made during the change finds either
//! the old or the new set. Removing one backend is one `DEL_DEST`.
//!
//! # Routing mesh
//! Only connections opened inside the namespace are balanced (the output hook). IPVS balances
//! incoming traffic only at local input, so the ingress sandbox will need the VIP as a local
//! address and a prerouting mark: not done here.

pub mod msg;
mod socket;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;

use msg::{CmdAttr, DestAttr, IpvsCmd, IpvsMessage, SvcAttr};
use socket::IpvsSocket;

use super::nft::{Flavor, apply_flavor, fwmark_of, observe_table, remove_table};
use super::{BROKEN, LbChange, LbService, LbTable, LoadBalancer, conntrack};
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::sysctl;

/// IPVS connection timeouts of a namespace, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpvsTimeouts {
    /// Established TCP connections (kernel default 900: the Swarm idle-cut).
    pub tcp: u32,
    /// TCP connections after FIN (kernel default 120).
    pub tcp_fin: u32,
    /// UDP "connections" (kernel default 300).
    pub udp: u32,
}

impl Default for IpvsTimeouts {
    /// One day for idle TCP (conntrack's own default is five days; a day bounds the IPVS
    /// table of a busy service), the kernel's defaults for FIN and UDP.
    fn default() -> IpvsTimeouts {
        IpvsTimeouts {
            tcp: 86_400,
            tcp_fin: 120,
            udp: 300,
        }
    }
}

/// Load balancing with IPVS: see the module doc.
#[derive(Clone, Debug)]
pub struct IpvsLb {
    /// Set in each namespace on every [`IpvsLb::apply`].
    pub timeouts: IpvsTimeouts,
    /// The IPVS scheduler of every service (`rr` for round robin).
    pub scheduler: String,
}

impl Default for IpvsLb {
    fn default() -> IpvsLb {
        IpvsLb {
            timeouts: IpvsTimeouts::default(),
            scheduler: "rr".to_owned(),
        }
    }
}

/// Whether the IPVS family resolves in the calling thread's namespace (families are global:
/// this says whether the kernel has IPVS loaded).
pub fn available() -> bool {
    IpvsSocket::open().is_ok()
}

/// Reads the IPVS timeouts of the namespace `netns` (`GET_CONFIG`).
pub fn read_timeouts(netns: &str) -> Result<IpvsTimeouts> {
    let netns = &Netns::open(netns)?;
    with_socket(netns, |sock| {
        let replies = sock
            .query(IpvsMessage::new(IpvsCmd::GetConfig, vec![]))
            .map_err(|e| ipvs_err(netns, "get config".into(), e))?;
        let mut t = IpvsTimeouts {
            tcp: 0,
            tcp_fin: 0,
            udp: 0,
        };
        for attr in replies.iter().flat_map(|m| &m.attrs) {
            match attr {
                CmdAttr::TimeoutTcp(v) => t.tcp = *v,
                CmdAttr::TimeoutTcpFin(v) => t.tcp_fin = *v,
                CmdAttr::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        Ok(t)
    })
}

fn ipvs_err(netns: &Netns, op: String, source: io::Error) -> Error {
    Error::Ipvs {
        op,
        netns: netns.name().to_owned(),
        source,
    }
}

/// Runs `f` with an IPVS socket opened inside `netns`.
fn with_socket<T: Send>(
    netns: &Netns,
    f: impl FnOnce(&mut IpvsSocket) -> Result<T> + Send,
) -> Result<T> {
    netns.run(|| {
        let mut sock =
            IpvsSocket::open().map_err(|e| ipvs_err(netns, "resolve family".into(), e))?;
        f(&mut sock)
    })?
}

/// One destination as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dest {
    ip: Ipv4Addr,
    port: u16,
    fwd: u32,
    weight: u32,
}

impl Dest {
    /// Whether it is what [`msg::masq_dest`] creates.
    fn is_ours(&self) -> bool {
        self.port == 0 && self.fwd == msg::FWD_MASQ && self.weight > 0
    }
}

/// The fwmark services of the namespace (marks, in the kernel's order).
fn dump_fwmark_services(sock: &mut IpvsSocket) -> io::Result<Vec<u32>> {
    let replies = sock.dump(IpvsMessage::new(IpvsCmd::GetService, vec![]))?;
    Ok(replies
        .iter()
        .filter_map(|m| {
            m.service()?.iter().find_map(|a| match a {
                SvcAttr::Fwmark(mark) if *mark != 0 => Some(*mark),
                _ => None,
            })
        })
        .collect())
}

/// The destinations of fwmark service `mark`.
fn dump_dests(sock: &mut IpvsSocket, mark: u32) -> io::Result<Vec<Dest>> {
    let replies = sock.dump(IpvsMessage::new(
        IpvsCmd::GetDest,
        vec![CmdAttr::Service(msg::fwmark_service_id(mark))],
    ))?;
    Ok(replies
        .iter()
        .filter_map(|m| {
            let mut d = Dest {
                ip: Ipv4Addr::UNSPECIFIED,
                port: 0,
                fwd: msg::FWD_MASQ,
                weight: 0,
            };
            for a in m.dest()? {
                match a {
                    DestAttr::Addr(ip) => d.ip = *ip,
                    DestAttr::Port(p) => d.port = *p,
                    DestAttr::FwdMethod(f) => d.fwd = *f & 0x7,
                    DestAttr::Weight(w) => d.weight = *w,
                    _ => {}
                }
            }
            Some(d)
        })
        .collect())
}

fn dest_msg(cmd: IpvsCmd, mark: u32, ip: Ipv4Addr) -> IpvsMessage {
    IpvsMessage::new(
        cmd,
        vec![
            CmdAttr::Service(msg::fwmark_service_id(mark)),
            CmdAttr::Dest(msg::masq_dest(ip)),
        ],
    )
}

/// Ok for absent things: ESRCH (no such service), ENOENT (no such destination).
fn absent_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
        r => r,
    }
}

impl IpvsLb {
    /// Sets the timeouts and the sysctls of the namespace the socket is in.
    fn configure(&self, netns: &Netns, sock: &mut IpvsSocket) -> Result<()> {
        let t = self.timeouts;
        sock.request(IpvsMessage::new(
            IpvsCmd::SetConfig,
            vec![
                CmdAttr::TimeoutTcp(t.tcp),
                CmdAttr::TimeoutTcpFin(t.tcp_fin),
                CmdAttr::TimeoutUdp(t.udp),
            ],
        ))
        .map_err(|e| ipvs_err(netns, "set config (timeouts)".into(), e))?;
        for name in ["expire_nodest_conn", "expire_quiescent_template"] {
            sysctl::write(&format!("/proc/sys/net/ipv4/vs/{name}"), "1")?;
        }
        Ok(())
    }

    /// Makes the fwmark service of `s` exist with our scheduler and at least the desired
    /// destinations. Returns the destinations to delete afterwards.
    fn add_phase(
        &self,
        netns: &Netns,
        sock: &mut IpvsSocket,
        s: &LbService,
    ) -> Result<Vec<Ipv4Addr>> {
        let mark = fwmark_of(s.vip);
        let what = |op: &str| format!("{op} fwmark service {mark:#010x} (vip {})", s.vip);
        let service = msg::fwmark_service(mark, &self.scheduler);
        match sock.request(IpvsMessage::new(
            IpvsCmd::NewService,
            vec![CmdAttr::Service(service.clone())],
        )) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => sock
                .request(IpvsMessage::new(
                    IpvsCmd::SetService,
                    vec![CmdAttr::Service(service)],
                ))
                .map_err(|e| ipvs_err(netns, what("set"), e))?,
            Err(e) => return Err(ipvs_err(netns, what("new"), e)),
        }
        let current =
            dump_dests(sock, mark).map_err(|e| ipvs_err(netns, what("list dests of"), e))?;
        let by_ip: BTreeMap<Ipv4Addr, Dest> = current.iter().map(|d| (d.ip, *d)).collect();
        for ip in &s.backends {
            let dest_what =
                |op: &str| format!("{op} dest {ip} of fwmark {mark:#010x} (vip {})", s.vip);
            match by_ip.get(ip) {
                Some(d) if d.is_ours() => {}
                Some(_) => sock
                    .request(dest_msg(IpvsCmd::SetDest, mark, *ip))
                    .map_err(|e| ipvs_err(netns, dest_what("set"), e))?,
                None => sock
                    .request(dest_msg(IpvsCmd::NewDest, mark, *ip))
                    .map_err(|e| ipvs_err(netns, dest_what("new"), e))?,
            }
        }
        Ok(by_ip
            .into_keys()
            .filter(|ip| !s.backends.contains(ip))
            .collect())
    }
}

impl LoadBalancer for IpvsLb {
    fn observe(&self, netns: &str) -> Result<LbTable> {
        let netns = &Netns::open(netns)?;
        let nft = observe_table(netns)?.unwrap_or_default();
        let ipvs: BTreeMap<u32, Vec<Dest>> = with_socket(netns, |sock| {
            let marks = dump_fwmark_services(sock)
                .map_err(|e| ipvs_err(netns, "list services".into(), e))?;
            let mut out = BTreeMap::new();
            for mark in marks {
                let dests = dump_dests(sock, mark).map_err(|e| {
                    ipvs_err(netns, format!("list dests of fwmark {mark:#010x}"), e)
                })?;
                out.insert(mark, dests);
            }
            Ok(out)
        })?;
        let backends_of = |dests: &[Dest]| -> BTreeSet<Ipv4Addr> {
            let mut set: BTreeSet<Ipv4Addr> = dests.iter().map(|d| d.ip).collect();
            if dests.is_empty() || dests.iter().any(|d| !d.is_ours()) {
                set.insert(BROKEN);
            }
            set
        };
        let mut table = nft.table(Flavor::Mark, |vip| {
            ipvs.get(&fwmark_of(vip)).map(|d| backends_of(d))
        });
        for (mark, dests) in &ipvs {
            let vip = Ipv4Addr::from(*mark);
            match table.services.get_mut(&vip) {
                // A rejecting VIP must have no IPVS service.
                Some(s) if s.backends.is_empty() => {
                    s.backends = backends_of(dests);
                    s.backends.insert(BROKEN);
                }
                Some(_) => {}
                None => {
                    let mut backends = backends_of(dests);
                    backends.insert(BROKEN);
                    table.upsert(LbService { vip, backends });
                }
            }
        }
        Ok(table)
    }

    fn apply(&self, netns: &str, changes: &[LbChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        tracing::debug!(netns, changes = changes.len(), "apply ipvs lb");
        let netns = &Netns::open(netns)?;
        with_socket(netns, |sock| {
            self.configure(netns, sock)?;
            let mut stale: Vec<(LbService, Vec<Ipv4Addr>)> = Vec::new();
            for change in changes {
                if let LbChange::Upsert(s) = change
                    && !s.backends.is_empty()
                {
                    let extra = self.add_phase(netns, sock, s)?;
                    stale.push((s.clone(), extra));
                }
            }
            apply_flavor(netns, Flavor::Mark, changes)?;
            for (s, extra) in stale {
                let mark = fwmark_of(s.vip);
                for ip in extra {
                    absent_ok(sock.request(dest_msg(IpvsCmd::DelDest, mark, ip))).map_err(|e| {
                        ipvs_err(
                            netns,
                            format!("del dest {ip} of fwmark {mark:#010x} (vip {})", s.vip),
                            e,
                        )
                    })?;
                }
            }
            for change in changes {
                let vip = match change {
                    LbChange::Upsert(s) if s.backends.is_empty() => s.vip,
                    LbChange::Remove(vip) => *vip,
                    LbChange::Upsert(_) => continue,
                };
                let mark = fwmark_of(vip);
                absent_ok(sock.request(IpvsMessage::new(
                    IpvsCmd::DelService,
                    vec![CmdAttr::Service(msg::fwmark_service_id(mark))],
                )))
                .map_err(|e| {
                    ipvs_err(
                        netns,
                        format!("del fwmark service {mark:#010x} (vip {vip})"),
                        e,
                    )
                })?;
            }
            Ok(())
        })
    }

    fn flush_conntrack(&self, netns: &str, backends: &BTreeSet<Ipv4Addr>) -> Result<()> {
        // IPVS's own entries of removed destinations expire on their next packet
        // (expire_nodest_conn); conntrack may hold the same flows.
        conntrack::flush_backends(&Netns::open(netns)?, backends).map(|_| ())
    }

    fn clear(&self, netns: &str) -> Result<()> {
        let netns = &Netns::open(netns)?;
        remove_table(netns)?;
        with_socket(netns, |sock| {
            let marks = dump_fwmark_services(sock)
                .map_err(|e| ipvs_err(netns, "list services".into(), e))?;
            for mark in marks {
                absent_ok(sock.request(IpvsMessage::new(
                    IpvsCmd::DelService,
                    vec![CmdAttr::Service(msg::fwmark_service_id(mark))],
                )))
                .map_err(|e| ipvs_err(netns, format!("del fwmark service {mark:#010x}"), e))?;
            }
            Ok(())
        })
    }
}
