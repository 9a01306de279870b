//! Kernel value types, checked once where they are made: interface names, IPv4 interface
//! addresses with their prefix length, and Ethernet addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Error, Result};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// The network address with the same prefix length (`10.0.1.7/24` -> `10.0.1.0/24`).
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// Whether `addr` is inside this address's subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.addr) & self.mask()
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
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

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC of an endpoint, derived from its IPv4 address as Docker does: `02:42:` (locally
    /// administered, unicast) followed by the four address bytes. Unique wherever the address is.
    pub fn from_ipv4(ip: Ipv4Addr) -> Mac {
        let [a, b, c, d] = ip.octets();
        Mac([0x02, 0x42, a, b, c, d])
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// A unicast address other than all zeros: the only kind an endpoint may have (a group
    /// address in an FDB or neighbor entry would flood or blackhole the overlay).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Exactly `xx:xx:xx:xx:xx:xx`, two hex digits a byte (either case), nothing around it.
impl FromStr for Mac {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mac> {
        let invalid = || Error::InvalidSpec {
            item: format!("mac {s:?}"),
            reason: "not six ':'-separated hex bytes".into(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(invalid)?;
            // Hex digits only: `from_str_radix` alone would also take a sign (`+a`).
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Mac(out))
    }
}

impl TryFrom<&[u8]> for Mac {
    type Error = Error;
    fn try_from(bytes: &[u8]) -> Result<Mac> {
        let octets: [u8; 6] = bytes.try_into().map_err(|_| Error::InvalidSpec {
            item: format!("mac {bytes:02x?}"),
            reason: "not 6 bytes".into(),
        })?;
        Ok(Mac(octets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn subnet_arithmetic() {
        let c: Ipv4Cidr = "10.0.1.7/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.0.1.0/24");
        assert!(c.contains(Ipv4Addr::new(10, 0, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 2, 1)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn mac_is_derived_from_the_address_and_round_trips() {
        let mac = Mac::from_ipv4(Ipv4Addr::new(10, 0, 1, 7));
        assert_eq!(mac.to_string(), "02:42:0a:00:01:07");
        assert_eq!("02:42:0a:00:01:07".parse::<Mac>().unwrap(), mac);
        for bad in [
            "",
            "02:42:0a:00:01",
            "02:42:0a:00:01:07:00",
            "2:42:0a:00:01:07",
            "zz:42:0a:00:01:07",
            "+2:42:0a:00:01:07",
            "02:+4:0a:00:01:07",
            "02:42:0a:00:01:+7",
            " 02:42:0a:00:01:07",
            "02:42:0a:00:01:07 ",
            "02-42-0a-00-01-07",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert_eq!(
            "02:42:0A:00:01:07".parse::<Mac>().unwrap(),
            mac,
            "either case"
        );
        assert!(mac.is_unicast());
        assert!(!Mac([0x01, 0, 0x5e, 0, 0, 1]).is_unicast(), "multicast");
        assert!(!Mac([0xff; 6]).is_unicast(), "broadcast");
        assert!(!Mac([0; 6]).is_unicast(), "zero");
    }
}
