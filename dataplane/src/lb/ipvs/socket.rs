//! A blocking generic-netlink socket that talks to the IPVS family.
//!
//! IPVS state is per network namespace and the socket talks to the namespace it was opened
//! in: open it on a thread inside the namespace ([`Netns::run`](crate::netns::Netns::run)).
//! Requests are strictly one at a time: send, then read until the ACK, the error or the end
//! of the dump.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::msg::{FAMILY_NAME, IpvsMessage};

/// An open socket with the IPVS family resolved.
pub(crate) struct IpvsSocket {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl IpvsSocket {
    /// Opens a socket and resolves the IPVS family. `NotFound` when the kernel has no IPVS
    /// (module not loaded or not built).
    pub fn open() -> io::Result<IpvsSocket> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let mut me = IpvsSocket {
            socket,
            family: 0,
            seq: 0,
        };
        let ask = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_owned())],
        });
        let replies = me
            .exchange(ask, NLM_F_REQUEST | NLM_F_ACK, |m: GenlMessage<GenlCtrl>| m)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => io::Error::new(
                    io::ErrorKind::NotFound,
                    "generic netlink family IPVS not found (no ip_vs module?)",
                ),
                _ => e,
            })?;
        me.family = replies
            .iter()
            .flat_map(|m| &m.payload.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "controller reply without family id",
                )
            })?;
        Ok(me)
    }

    /// Sends `msg` and waits for the kernel's ACK (or error).
    pub fn request(&mut self, msg: IpvsMessage) -> io::Result<()> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family);
        self.exchange(
            genl,
            NLM_F_REQUEST | NLM_F_ACK,
            |m: GenlMessage<IpvsMessage>| m,
        )
        .map(|_| ())
    }

    /// Sends `msg` and returns the kernel's answer (the messages before the ACK).
    pub fn query(&mut self, msg: IpvsMessage) -> io::Result<Vec<IpvsMessage>> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family);
        self.exchange(
            genl,
            NLM_F_REQUEST | NLM_F_ACK,
            |m: GenlMessage<IpvsMessage>| m.payload,
        )
    }

    /// Sends the dump request `msg` and returns every message of the dump.
    pub fn dump(&mut self, msg: IpvsMessage) -> io::Result<Vec<IpvsMessage>> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family);
        self.exchange(
            genl,
            NLM_F_REQUEST | NLM_F_DUMP,
            |m: GenlMessage<IpvsMessage>| m.payload,
        )
    }

    /// Sends one request and collects its replies until ACK, error or DONE.
    fn exchange<Req, Rep, T>(
        &mut self,
        req: Req,
        flags: u16,
        keep: impl Fn(Rep) -> T,
    ) -> io::Result<Vec<T>>
    where
        Req: NetlinkSerializable + Debug,
        Rep: NetlinkDeserializable + Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(req));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<Rep>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(keep(m));
                        if !dump {
                            // An answer to a non-dump request; its ACK follows.
                            continue;
                        }
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }
}
