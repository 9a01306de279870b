//! The IPVS generic-netlink family ("IPVS", version 1), from `include/uapi/linux/ip_vs.h`,
//! written on netlink-packet-generic (no maintained crate has it).
//!
//! A message is a generic-netlink header (command, version) followed by attributes. Services
//! and destinations travel as nested attributes (`IPVS_CMD_ATTR_SERVICE`,
//! `IPVS_CMD_ATTR_DEST`); the timeouts of `SET_CONFIG`/`GET_CONFIG` are top-level `u32`s in
//! seconds. Integers are host order except ports (network order) and the persistence netmask
//! (network order). Addresses are a 16-byte `union nf_inet_addr`: an IPv4 address fills the
//! first 4 bytes. Attributes the kernel sends that we do not use (statistics...) are kept raw.

use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u32, parse_string, parse_u16, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The family name the generic-netlink controller resolves.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const FAMILY_VERSION: u8 = 1;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `IP_VS_CONN_F_MASQ`: NAT forwarding (the only method that rewrites the destination).
pub const FWD_MASQ: u32 = 0;

const NLA_F_NESTED: u16 = 0x8000;

/// `IPVS_CMD_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    SetConfig,
    GetConfig,
    Flush,
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(c: IpvsCmd) -> u8 {
        match c {
            IpvsCmd::NewService => 1,
            IpvsCmd::SetService => 2,
            IpvsCmd::DelService => 3,
            IpvsCmd::GetService => 4,
            IpvsCmd::NewDest => 5,
            IpvsCmd::SetDest => 6,
            IpvsCmd::DelDest => 7,
            IpvsCmd::GetDest => 8,
            IpvsCmd::SetConfig => 12,
            IpvsCmd::GetConfig => 13,
            IpvsCmd::Flush => 17,
            IpvsCmd::Other(n) => n,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(n: u8) -> IpvsCmd {
        match n {
            1 => IpvsCmd::NewService,
            2 => IpvsCmd::SetService,
            3 => IpvsCmd::DelService,
            4 => IpvsCmd::GetService,
            5 => IpvsCmd::NewDest,
            6 => IpvsCmd::SetDest,
            7 => IpvsCmd::DelDest,
            8 => IpvsCmd::GetDest,
            12 => IpvsCmd::SetConfig,
            13 => IpvsCmd::GetConfig,
            17 => IpvsCmd::Flush,
            n => IpvsCmd::Other(n),
        }
    }
}

/// Top-level attributes (`IPVS_CMD_ATTR_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdAttr {
    /// 1, nested.
    Service(Vec<SvcAttr>),
    /// 2, nested.
    Dest(Vec<DestAttr>),
    /// 4: TCP established timeout, seconds (0 in SET_CONFIG: leave unchanged).
    TimeoutTcp(u32),
    /// 5: TCP FIN_WAIT timeout, seconds.
    TimeoutTcpFin(u32),
    /// 6: UDP timeout, seconds.
    TimeoutUdp(u32),
    Other(DefaultNla),
}

/// Service attributes (`IPVS_SVC_ATTR_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvcAttr {
    /// 1: address family, u16.
    Af(u16),
    /// 2: protocol, u16.
    Protocol(u16),
    /// 3: virtual address, 16 bytes.
    Addr(Ipv4Addr),
    /// 4: virtual port, network order.
    Port(u16),
    /// 5: firewall mark, u32.
    Fwmark(u32),
    /// 6: scheduler name, NUL-terminated.
    SchedName(String),
    /// 7: `struct ip_vs_flags { u32 flags; u32 mask; }`.
    Flags {
        flags: u32,
        mask: u32,
    },
    /// 8: persistence timeout, u32 seconds.
    Timeout(u32),
    /// 9: persistence netmask, network order.
    Netmask(u32),
    Other(DefaultNla),
}

/// Destination attributes (`IPVS_DEST_ATTR_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    /// 1: real server address, 16 bytes.
    Addr(Ipv4Addr),
    /// 2: real server port, network order (0: the client's destination port).
    Port(u16),
    /// 3: forwarding method, u32 (`IP_VS_CONN_F_*`).
    FwdMethod(u32),
    /// 4: weight, u32.
    Weight(u32),
    /// 5: upper connection threshold, u32.
    UThresh(u32),
    /// 6: lower connection threshold, u32.
    LThresh(u32),
    /// 7: active connections (read only).
    ActiveConns(u32),
    /// 8: inactive connections (read only).
    InactConns(u32),
    /// 11: address family of the address, u16.
    AddrFamily(u16),
    Other(DefaultNla),
}

/// Emits a 16-byte `nf_inet_addr` holding `ip`.
fn emit_addr(ip: Ipv4Addr, buf: &mut [u8]) {
    buf[..16].fill(0);
    buf[..4].copy_from_slice(&ip.octets());
}

fn parse_addr(payload: &[u8]) -> Result<Ipv4Addr, DecodeError> {
    if payload.len() < 4 {
        return Err(DecodeError::invalid_ip_address(payload.len()));
    }
    Ok(Ipv4Addr::new(
        payload[0], payload[1], payload[2], payload[3],
    ))
}

fn parse_be16(payload: &[u8]) -> Result<u16, DecodeError> {
    parse_u16(payload).map(u16::from_be)
}

fn parse_be32(payload: &[u8]) -> Result<u32, DecodeError> {
    parse_u32(payload).map(u32::from_be)
}

/// Parses the attributes of a nested attribute's payload.
fn parse_nested<T>(
    payload: &[u8],
    one: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(payload).map(|nla| one(&nla?)).collect()
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => 1,
            SvcAttr::Protocol(_) => 2,
            SvcAttr::Addr(_) => 3,
            SvcAttr::Port(_) => 4,
            SvcAttr::Fwmark(_) => 5,
            SvcAttr::SchedName(_) => 6,
            SvcAttr::Flags { .. } => 7,
            SvcAttr::Timeout(_) => 8,
            SvcAttr::Netmask(_) => 9,
            SvcAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        // The buffers are sized by `value_len`, so the emits cannot fail.
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => {
                let _ = emit_u16(buf, *v);
            }
            SvcAttr::Port(p) => buf[..2].copy_from_slice(&p.to_be_bytes()),
            SvcAttr::Addr(ip) => emit_addr(*ip, buf),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) => {
                let _ = emit_u32(buf, *v);
            }
            SvcAttr::Netmask(m) => buf[..4].copy_from_slice(&m.to_be_bytes()),
            SvcAttr::SchedName(s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            SvcAttr::Flags { flags, mask } => {
                let _ = emit_u32(&mut buf[..4], *flags);
                let _ = emit_u32(&mut buf[4..8], *mask);
            }
            SvcAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl SvcAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<SvcAttr, DecodeError> {
        let p = nla.value();
        Ok(match nla.kind() & !NLA_F_NESTED {
            1 => SvcAttr::Af(parse_u16(p)?),
            2 => SvcAttr::Protocol(parse_u16(p)?),
            3 => SvcAttr::Addr(parse_addr(p)?),
            4 => SvcAttr::Port(parse_be16(p)?),
            5 => SvcAttr::Fwmark(parse_u32(p)?),
            6 => SvcAttr::SchedName(parse_string(p)?),
            7 if p.len() >= 8 => SvcAttr::Flags {
                flags: parse_u32(&p[..4])?,
                mask: parse_u32(&p[4..8])?,
            },
            8 => SvcAttr::Timeout(parse_u32(p)?),
            9 => SvcAttr::Netmask(parse_be32(p)?),
            _ => SvcAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UThresh(_)
            | DestAttr::LThresh(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactConns(_) => 4,
            DestAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => 1,
            DestAttr::Port(_) => 2,
            DestAttr::FwdMethod(_) => 3,
            DestAttr::Weight(_) => 4,
            DestAttr::UThresh(_) => 5,
            DestAttr::LThresh(_) => 6,
            DestAttr::ActiveConns(_) => 7,
            DestAttr::InactConns(_) => 8,
            DestAttr::AddrFamily(_) => 11,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DestAttr::Addr(ip) => emit_addr(*ip, buf),
            DestAttr::Port(p) => buf[..2].copy_from_slice(&p.to_be_bytes()),
            DestAttr::AddrFamily(v) => {
                let _ = emit_u16(buf, *v);
            }
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v) => {
                let _ = emit_u32(buf, *v);
            }
            DestAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl DestAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<DestAttr, DecodeError> {
        let p = nla.value();
        Ok(match nla.kind() & !NLA_F_NESTED {
            1 => DestAttr::Addr(parse_addr(p)?),
            2 => DestAttr::Port(parse_be16(p)?),
            3 => DestAttr::FwdMethod(parse_u32(p)?),
            4 => DestAttr::Weight(parse_u32(p)?),
            5 => DestAttr::UThresh(parse_u32(p)?),
            6 => DestAttr::LThresh(parse_u32(p)?),
            7 => DestAttr::ActiveConns(parse_u32(p)?),
            8 => DestAttr::InactConns(parse_u32(p)?),
            11 => DestAttr::AddrFamily(parse_u16(p)?),
            _ => DestAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(attrs) => attrs.as_slice().buffer_len(),
            CmdAttr::Dest(attrs) => attrs.as_slice().buffer_len(),
            CmdAttr::TimeoutTcp(_) | CmdAttr::TimeoutTcpFin(_) | CmdAttr::TimeoutUdp(_) => 4,
            CmdAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => 1 | NLA_F_NESTED,
            CmdAttr::Dest(_) => 2 | NLA_F_NESTED,
            CmdAttr::TimeoutTcp(_) => 4,
            CmdAttr::TimeoutTcpFin(_) => 5,
            CmdAttr::TimeoutUdp(_) => 6,
            CmdAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            CmdAttr::Service(attrs) => attrs.as_slice().emit(buf),
            CmdAttr::Dest(attrs) => attrs.as_slice().emit(buf),
            CmdAttr::TimeoutTcp(v) | CmdAttr::TimeoutTcpFin(v) | CmdAttr::TimeoutUdp(v) => {
                let _ = emit_u32(buf, *v);
            }
            CmdAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl CmdAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<CmdAttr, DecodeError> {
        let p = nla.value();
        Ok(match nla.kind() & !NLA_F_NESTED {
            1 => CmdAttr::Service(parse_nested(p, SvcAttr::parse)?),
            2 => CmdAttr::Dest(parse_nested(p, DestAttr::parse)?),
            4 => CmdAttr::TimeoutTcp(parse_u32(p)?),
            5 => CmdAttr::TimeoutTcpFin(parse_u32(p)?),
            6 => CmdAttr::TimeoutUdp(parse_u32(p)?),
            _ => CmdAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// One message of the IPVS family: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attrs: Vec<CmdAttr>,
}

impl IpvsMessage {
    pub fn new(cmd: IpvsCmd, attrs: Vec<CmdAttr>) -> IpvsMessage {
        IpvsMessage { cmd, attrs }
    }

    /// The nested service attributes, if the message has them.
    pub fn service(&self) -> Option<&[SvcAttr]> {
        self.attrs.iter().find_map(|a| match a {
            CmdAttr::Service(s) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// The nested destination attributes, if the message has them.
    pub fn dest(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            CmdAttr::Dest(d) => Some(d.as_slice()),
            _ => None,
        })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: header.cmd.into(),
            attrs: parse_nested(buf, CmdAttr::parse)?,
        })
    }
}

/// The attributes that identify the fwmark service `mark` (enough for DEL_SERVICE, the
/// destination commands and GET_DEST).
pub fn fwmark_service_id(mark: u32) -> Vec<SvcAttr> {
    vec![SvcAttr::Af(AF_INET), SvcAttr::Fwmark(mark)]
}

/// The full attributes of a new fwmark service with scheduler `sched`, no persistence.
pub fn fwmark_service(mark: u32, sched: &str) -> Vec<SvcAttr> {
    vec![
        SvcAttr::Af(AF_INET),
        SvcAttr::Fwmark(mark),
        SvcAttr::SchedName(sched.to_owned()),
        SvcAttr::Flags { flags: 0, mask: 0 },
        SvcAttr::Timeout(0),
        SvcAttr::Netmask(u32::MAX),
    ]
}

/// The attributes of a masquerading destination `ip` with port 0 (keep the client's
/// destination port), weight 1, no thresholds.
pub fn masq_dest(ip: Ipv4Addr) -> Vec<DestAttr> {
    vec![
        DestAttr::Addr(ip),
        DestAttr::Port(0),
        DestAttr::FwdMethod(FWD_MASQ),
        DestAttr::Weight(1),
        DestAttr::UThresh(0),
        DestAttr::LThresh(0),
        DestAttr::AddrFamily(AF_INET),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_generic::GenlMessage;

    fn bytes(msg: &IpvsMessage) -> Vec<u8> {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    /// NEW_SERVICE for fwmark 0x0a000005 with `rr`, as ipvsadm (libnl) lays it out:
    /// one nested SERVICE attribute holding AF, FWMARK, SCHED_NAME, FLAGS, TIMEOUT, NETMASK.
    #[test]
    fn new_fwmark_service_layout() {
        let msg = IpvsMessage::new(
            IpvsCmd::NewService,
            vec![CmdAttr::Service(fwmark_service(0x0a00_0005, "rr"))],
        );
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            56, 0, 0x01, 0x80,                  // SERVICE, nested: 4 + 52 bytes
            6, 0, 1, 0, 2, 0, 0, 0,             // AF = AF_INET, padded
            8, 0, 5, 0, 0x05, 0, 0, 0x0a,       // FWMARK (host order, little endian)
            7, 0, 6, 0, b'r', b'r', 0, 0,       // SCHED_NAME "rr\0", padded
            12, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, // FLAGS {0, 0}
            8, 0, 8, 0, 0, 0, 0, 0,             // TIMEOUT 0
            8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff, // NETMASK 255.255.255.255
        ];
        assert_eq!(bytes(&msg), want);

        // The generic-netlink header carries command 1, version 1.
        let mut genl = GenlMessage::from_payload(msg.clone());
        genl.set_resolved_family_id(0x23);
        let mut buf = vec![0u8; genl.buffer_len()];
        genl.emit(&mut buf);
        assert_eq!(&buf[..4], &[1, 1, 0, 0]);
        assert_eq!(
            IpvsMessage::parse_with_param(&buf[4..], GenlHeader { cmd: 1, version: 1 }).unwrap(),
            msg
        );
    }

    #[test]
    fn new_dest_layout() {
        let msg = IpvsMessage::new(
            IpvsCmd::NewDest,
            vec![
                CmdAttr::Service(fwmark_service_id(7)),
                CmdAttr::Dest(masq_dest(Ipv4Addr::new(10, 0, 0, 9))),
            ],
        );
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            20, 0, 0x01, 0x80,                  // SERVICE, nested
            6, 0, 1, 0, 2, 0, 0, 0,             // AF_INET
            8, 0, 5, 0, 7, 0, 0, 0,             // FWMARK 7
            72, 0, 0x02, 0x80,                  // DEST, nested: 4 + 68 bytes
            20, 0, 1, 0, 10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR (16 bytes)
            6, 0, 2, 0, 0, 0, 0, 0,             // PORT 0 (network order), padded
            8, 0, 3, 0, 0, 0, 0, 0,             // FWD_METHOD masq
            8, 0, 4, 0, 1, 0, 0, 0,             // WEIGHT 1
            8, 0, 5, 0, 0, 0, 0, 0,             // U_THRESH
            8, 0, 6, 0, 0, 0, 0, 0,             // L_THRESH
            6, 0, 11, 0, 2, 0, 0, 0,            // ADDR_FAMILY AF_INET
        ];
        assert_eq!(bytes(&msg), want);
    }

    #[test]
    fn set_config_layout() {
        let msg = IpvsMessage::new(
            IpvsCmd::SetConfig,
            vec![
                CmdAttr::TimeoutTcp(86400),
                CmdAttr::TimeoutTcpFin(120),
                CmdAttr::TimeoutUdp(300),
            ],
        );
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            8, 0, 4, 0, 0x80, 0x51, 0x01, 0x00, // TIMEOUT_TCP 86400
            8, 0, 5, 0, 120, 0, 0, 0,           // TIMEOUT_TCP_FIN 120
            8, 0, 6, 0, 0x2c, 0x01, 0, 0,       // TIMEOUT_UDP 300
        ];
        assert_eq!(bytes(&msg), want);
    }

    /// A GET_DEST dump reply as the kernel sends it (attribute order of
    /// `ip_vs_genl_fill_dest`), with a port, statistics we keep raw and connection counts.
    #[test]
    fn dest_reply_decodes() {
        #[rustfmt::skip]
        let reply: Vec<u8> = vec![
            64, 0, 0x02, 0x80,                  // DEST, nested (kernel sets NLA_F_NESTED)
            20, 0, 1, 0, 10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            6, 0, 2, 0, 0x1f, 0x90, 0, 0,       // PORT 8080
            8, 0, 3, 0, 0, 0, 0, 0,             // FWD_METHOD masq
            8, 0, 4, 0, 1, 0, 0, 0,             // WEIGHT 1
            8, 0, 7, 0, 3, 0, 0, 0,             // ACTIVE_CONNS 3
            8, 0, 10, 0x80, 0, 0, 0, 0,         // STATS (nested, empty here): kept raw
        ];
        let msg = IpvsMessage::parse_with_param(&reply, GenlHeader { cmd: 5, version: 1 }).unwrap();
        assert_eq!(msg.cmd, IpvsCmd::NewDest);
        let dest = msg.dest().unwrap();
        assert_eq!(dest[0], DestAttr::Addr(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(dest[1], DestAttr::Port(8080));
        assert_eq!(dest[2], DestAttr::FwdMethod(FWD_MASQ));
        assert_eq!(dest[3], DestAttr::Weight(1));
        assert_eq!(dest[4], DestAttr::ActiveConns(3));
        assert!(matches!(dest[5], DestAttr::Other(_)));
    }

    #[test]
    fn service_and_config_replies_decode() {
        let svc = IpvsMessage::new(
            IpvsCmd::NewService,
            vec![CmdAttr::Service(fwmark_service(0x0a00_0005, "rr"))],
        );
        let parsed =
            IpvsMessage::parse_with_param(&bytes(&svc), GenlHeader { cmd: 1, version: 1 }).unwrap();
        assert_eq!(parsed, svc);
        assert!(
            parsed
                .service()
                .unwrap()
                .contains(&SvcAttr::SchedName("rr".into()))
        );

        #[rustfmt::skip]
        let config: Vec<u8> = vec![
            8, 0, 4, 0, 0x84, 0x03, 0, 0,       // TIMEOUT_TCP 900
            8, 0, 5, 0, 120, 0, 0, 0,
            8, 0, 6, 0, 0x2c, 0x01, 0, 0,
        ];
        let msg = IpvsMessage::parse_with_param(
            &config,
            GenlHeader {
                cmd: 12,
                version: 1,
            },
        )
        .unwrap();
        assert_eq!(
            msg.attrs,
            vec![
                CmdAttr::TimeoutTcp(900),
                CmdAttr::TimeoutTcpFin(120),
                CmdAttr::TimeoutUdp(300)
            ]
        );
    }
}
