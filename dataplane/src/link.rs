//! Links over rtnetlink: small helpers named by verb, idempotent at the lowest layer.
//!
//! A [`Netlink`] handle talks to the namespace its socket was opened in, so open it on a thread
//! inside that namespace: [`in_netns`] does exactly that. `ensure_*` helpers take EEXIST as
//! success and `remove_*` helpers take ENOENT/ENODEV as success; every other refusal is an
//! [`Error::Netlink`] naming the operation and the interface.
//!
//! ```no_run
//! # use mesh_dataplane::{link::{self, IfName}, netns::Netns};
//! # fn demo(ns: &Netns) -> mesh_dataplane::Result<()> {
//! let lo = IfName::new("lo")?;
//! link::in_netns(ns, async |nl| nl.set_up(&lo).await)?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::str::FromStr;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkFlags, LinkMessage};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::error::{Error, Result, errno_of};
use crate::netns::Netns;

/// A kernel interface name: 1 to 15 bytes (`IFNAMSIZ - 1`), no `/`, `:`, whitespace or NUL,
/// not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// The kernel's limit on the length of an interface name, in bytes.
    pub const MAX_LEN: usize = 15;

    /// Checks `name` against the kernel's rules.
    pub fn new(name: impl Into<String>) -> Result<IfName> {
        let name = name.into();
        let reason = if name.is_empty() {
            "empty"
        } else if name.len() > Self::MAX_LEN {
            "longer than 15 bytes"
        } else if name == "." || name == ".." {
            "reserved"
        } else if name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
        {
            "contains '/', ':', NUL or whitespace"
        } else {
            return Ok(IfName(name));
        };
        Err(Error::InvalidIfName { name, reason })
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = Error;
    fn from_str(s: &str) -> Result<IfName> {
        IfName::new(s)
    }
}

impl TryFrom<&str> for IfName {
    type Error = Error;
    fn try_from(s: &str) -> Result<IfName> {
        IfName::new(s)
    }
}

/// An IPv4 interface address with its prefix length, as in `10.77.0.11/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// `addr/prefix_len`; the prefix length must be at most 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Cidr> {
        if prefix_len > 32 {
            return Err(Error::InvalidCidr {
                input: format!("{addr}/{prefix_len}"),
                reason: "prefix length above 32",
            });
        }
        Ok(Ipv4Cidr { addr, prefix_len })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Ipv4Cidr> {
        let invalid = |reason| Error::InvalidCidr {
            input: s.to_owned(),
            reason,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| invalid("missing '/prefix-length'"))?;
        let addr = addr.parse().map_err(|_| invalid("not an ipv4 address"))?;
        let len = len
            .parse()
            .map_err(|_| invalid("prefix length not a number"))?;
        Ipv4Cidr::new(addr, len)
    }
}

/// Opens a [`Netlink`] handle inside `ns` and runs `f` with it, on a thread of that namespace
/// (see [`Netns::run_async`]).
pub fn in_netns<T, F>(ns: &Netns, f: F) -> Result<T>
where
    F: AsyncFnOnce(&Netlink) -> Result<T> + Send,
    T: Send,
{
    let name = ns.name().to_owned();
    ns.run_async(async move || {
        let nl = Netlink::connect(name)?;
        f(&nl).await
    })?
}

/// A route-netlink handle bound to the namespace it was opened in.
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// Name of the namespace, for error messages.
    netns: String,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's namespace, which messages call `netns`.
    /// Must be called inside a tokio runtime (the connection runs as a task on it).
    pub fn connect(netns: impl Into<String>) -> Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            netns: netns.into(),
        })
    }

    /// The index of the link `name`, or `None` if there is none.
    pub async fn link_index(&self, name: &IfName) -> Result<Option<u32>> {
        Ok(self.get_link(name).await?.map(|m| m.header.index))
    }

    /// The index of the link `name`; [`Error::LinkNotFound`] if there is none.
    pub async fn require_index(&self, name: &IfName) -> Result<u32> {
        self.link_index(name)
            .await?
            .ok_or_else(|| Error::LinkNotFound {
                ifname: name.to_string(),
                netns: self.netns.clone(),
            })
    }

    /// Whether the link `name` is administratively up.
    pub async fn is_up(&self, name: &IfName) -> Result<bool> {
        let msg = self
            .get_link(name)
            .await?
            .ok_or_else(|| Error::LinkNotFound {
                ifname: name.to_string(),
                netns: self.netns.clone(),
            })?;
        Ok(msg.header.flags.contains(LinkFlags::Up))
    }

    /// Creates a veth pair whose end `a` is created directly in `a_ns` and end `b` in `b_ns`
    /// (no end ever appears in this handle's namespace unless it is one of the two). Success if
    /// a link of that name already exists (it is not checked to be this pair).
    pub async fn ensure_veth_pair(
        &self,
        a: &IfName,
        a_ns: &Netns,
        b: &IfName,
        b_ns: &Netns,
    ) -> Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(b.as_str())
            .setns_by_fd(b_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(a.as_str(), b.as_str())
            .setns_by_fd(a_ns.as_raw_fd())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let result = self.handle.link().add(msg).execute().await;
        ok_if_errno(result, libc::EEXIST).map_err(|source| netlink_err("add veth", a, source))
    }

    /// Creates the bridge `name` (if absent) and returns its index.
    pub async fn ensure_bridge(&self, name: &IfName) -> Result<u32> {
        let result = self
            .handle
            .link()
            .add(LinkBridge::new(name.as_str()).build())
            .execute()
            .await;
        ok_if_errno(result, libc::EEXIST)
            .map_err(|source| netlink_err("add bridge", name, source))?;
        self.require_index(name).await
    }

    /// Enslaves `port` to the bridge (or other controller) `controller`. Idempotent.
    pub async fn set_controller(&self, port: &IfName, controller: &IfName) -> Result<()> {
        let port_index = self.require_index(port).await?;
        let controller_index = self.require_index(controller).await?;
        let msg = LinkUnspec::new_with_index(port_index)
            .controller(controller_index)
            .build();
        self.set_link(msg, "set controller of", port).await
    }

    /// Sets `name` administratively up. Idempotent.
    pub async fn set_up(&self, name: &IfName) -> Result<()> {
        let index = self.require_index(name).await?;
        self.set_link(
            LinkUnspec::new_with_index(index).up().build(),
            "set up",
            name,
        )
        .await
    }

    /// Sets `name` administratively down. Idempotent.
    pub async fn set_down(&self, name: &IfName) -> Result<()> {
        let index = self.require_index(name).await?;
        self.set_link(
            LinkUnspec::new_with_index(index).down().build(),
            "set down",
            name,
        )
        .await
    }

    /// Adds `cidr` to `name` (success if it is already there).
    pub async fn ensure_address(&self, name: &IfName, cidr: Ipv4Cidr) -> Result<()> {
        let index = self.require_index(name).await?;
        let result = self
            .handle
            .address()
            .add(index, IpAddr::V4(cidr.addr()), cidr.prefix_len())
            .execute()
            .await;
        ok_if_errno(result, libc::EEXIST).map_err(|source| netlink_err("add address", name, source))
    }

    /// The IPv4 addresses on `name`.
    pub async fn addresses(&self, name: &IfName) -> Result<Vec<Ipv4Cidr>> {
        let index = self.require_index(name).await?;
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| netlink_err("list addresses", name, source))?;
        let mut out = Vec::new();
        for msg in messages {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(addr)) = attr {
                    out.push(Ipv4Cidr::new(*addr, msg.header.prefix_len)?);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the link `name`; absent is success. Deleting one end of a veth deletes both.
    pub async fn remove_link(&self, name: &IfName) -> Result<()> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        let result = self.handle.link().del(index).execute().await;
        ok_if_errno(result, libc::ENODEV).map_err(|source| netlink_err("delete link", name, source))
    }

    async fn get_link(&self, name: &IfName) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.as_str()).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if matches!(errno_of(&e), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(None),
            Err(source) => Err(netlink_err("get link", name, source)),
        }
    }

    async fn set_link(&self, msg: LinkMessage, op: &'static str, name: &IfName) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| netlink_err(op, name, source))
    }
}

/// `Ok` if the request succeeded or failed with exactly `errno` (the idempotent outcome).
fn ok_if_errno(result: Result<(), rtnetlink::Error>, errno: i32) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno_of(&e) == Some(errno) => Ok(()),
        other => other,
    }
}

fn netlink_err(op: &'static str, name: &IfName, source: rtnetlink::Error) -> Error {
    Error::Netlink {
        op,
        ifname: name.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    //! Need root: each test builds its own namespaces (`TempNetns`: `md<pid>x<n>-...`).

    use super::*;
    use crate::netns::{Netns, TempNetns};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::time::Duration;

    /// Two namespaces, removed on drop (also on panic); the veth goes with them.
    struct Pair {
        a: TempNetns,
        b: TempNetns,
    }

    fn name(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }

    /// Two namespaces joined by a veth `v0` (in a, 10.99.0.1/24) <-> `v1` (in b, 10.99.0.2/24).
    fn pair() -> Pair {
        let pair = Pair {
            a: TempNetns::new("a").unwrap(),
            b: TempNetns::new("b").unwrap(),
        };
        // Created from the calling (root) namespace: both ends land directly in a and b.
        Netns::current()
            .unwrap()
            .run_async(async || {
                let nl = Netlink::connect("root")?;
                nl.ensure_veth_pair(&name("v0"), &pair.a, &name("v1"), &pair.b)
                    .await
            })
            .unwrap()
            .unwrap();
        for (ns, ifname, addr) in [
            (&pair.a, "v0", "10.99.0.1/24"),
            (&pair.b, "v1", "10.99.0.2/24"),
        ] {
            in_netns(ns, async |nl| {
                nl.set_up(&name("lo")).await?;
                nl.ensure_address(&name(ifname), addr.parse()?).await?;
                nl.set_up(&name(ifname)).await
            })
            .unwrap();
        }
        pair
    }

    #[test]
    fn ifname_is_checked_against_kernel_rules() {
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("a".repeat(15)).is_ok());
        for bad in ["", "a".repeat(16).as_str(), "a/b", "a b", "a:1", ".."] {
            let err = IfName::new(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidIfName { .. }), "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")));
        }
    }

    #[test]
    fn cidr_parses_and_rejects() {
        let c: Ipv4Cidr = "10.77.0.11/24".parse().unwrap();
        assert_eq!(
            (c.addr(), c.prefix_len()),
            (Ipv4Addr::new(10, 77, 0, 11), 24)
        );
        assert_eq!(c.to_string(), "10.77.0.11/24");
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/24", "10.0.0.1/x"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn veth_between_namespaces_carries_tcp_and_udp() {
        let pair = pair();
        // No end of the pair appeared in the root namespace.
        let in_root = Netns::current()
            .unwrap()
            .run_async(async || Netlink::connect("root")?.link_index(&name("v0")).await)
            .unwrap()
            .unwrap();
        assert_eq!(in_root, None);

        let listener = pair
            .b
            .run(|| TcpListener::bind("10.99.0.2:7000"))
            .unwrap()
            .unwrap();
        let udp_b = pair
            .b
            .run(|| UdpSocket::bind("10.99.0.2:7001"))
            .unwrap()
            .unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let (mut conn, peer) = listener.accept().unwrap();
                assert_eq!(peer.ip(), Ipv4Addr::new(10, 99, 0, 1));
                conn.write_all(b"pong").unwrap();
            });
            let reply = pair
                .a
                .run(|| -> std::io::Result<String> {
                    let addr: SocketAddr = "10.99.0.2:7000".parse().unwrap();
                    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    let mut reply = String::new();
                    conn.read_to_string(&mut reply)?;
                    Ok(reply)
                })
                .unwrap()
                .unwrap();
            assert_eq!(reply, "pong");
        });

        let udp_a = pair
            .a
            .run(|| UdpSocket::bind("10.99.0.1:0"))
            .unwrap()
            .unwrap();
        udp_a.send_to(b"ping", "10.99.0.2:7001").unwrap();
        udp_b
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = udp_b.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from.ip()),
            (&b"ping"[..], IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)))
        );
    }

    #[test]
    fn repeated_ensure_is_idempotent() {
        let pair = pair();
        in_netns(&pair.a, async |nl| {
            let (v0, br) = (name("v0"), name("br0"));
            let first = nl.ensure_bridge(&br).await?;
            assert_eq!(nl.ensure_bridge(&br).await?, first);
            nl.ensure_address(&v0, "10.99.0.1/24".parse()?).await?;
            assert_eq!(nl.addresses(&v0).await?, vec!["10.99.0.1/24".parse()?]);
            nl.set_up(&v0).await?;
            nl.set_controller(&v0, &br).await?;
            nl.set_controller(&v0, &br).await?;
            nl.set_down(&v0).await?;
            nl.set_down(&v0).await?;
            assert!(!nl.is_up(&v0).await?);
            nl.remove_link(&br).await?;
            nl.remove_link(&br).await?;
            assert_eq!(nl.link_index(&br).await?, None);
            Ok(())
        })
        .unwrap();
        // The veth already exists: ensuring it again is success.
        in_netns(&pair.a, async |nl| {
            nl.ensure_veth_pair(&name("v0"), &pair.a, &name("v1"), &pair.b)
                .await
        })
        .unwrap();
    }

    #[test]
    fn missing_link_errors_name_it() {
        let pair = pair();
        let err = in_netns(&pair.a, async |nl| nl.set_up(&name("nope0")).await).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("link nope0 not found in {}", pair.a.name())
        );
    }

    #[test]
    fn dropping_the_pair_removes_both_namespaces() {
        let pair = pair();
        let (a, b) = (pair.a.name().to_owned(), pair.b.name().to_owned());
        drop(pair);
        assert!(!Netns::exists(&a) && !Netns::exists(&b));
        assert!(!Netns::list().unwrap().iter().any(|n| *n == a || *n == b));
    }
}
