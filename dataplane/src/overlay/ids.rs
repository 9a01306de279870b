//! The ids of the overlay and the kernel names derived from them, in one place so the
//! planner, the Linux implementation and the fake agree on them: VNIs, task ids, the
//! namespace prefix of a daemon (and what a name with it stands for), and link names.

use std::fmt;

use crate::error::{Error, Result};
use crate::types::IfName;

/// A VXLAN device is created under this name followed by its VNI in the daemon's namespace,
/// then moved into its sandbox. One left behind by a crash is recognised and removed.
pub(crate) const VXLAN_STAGING_PREFIX: &str = "mvx";
/// Prefix of the sandbox-side veth of a task endpoint, followed by the task's short id.
const NETWORK_PORT_PREFIX: &str = "vn";
/// Prefix of the daemon-side veth of a task's gateway link, followed by the task's short id.
const GATEWAY_PORT_PREFIX: &str = "vg";

/// A VXLAN network identifier: 1 to 2^24 - 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI (24 bits).
    pub const MAX: u32 = (1 << 24) - 1;

    pub fn new(vni: u32) -> Result<Vni> {
        if vni == 0 || vni > Self::MAX {
            return Err(Error::InvalidSpec {
                item: format!("vni {vni}"),
                reason: "not in 1..=16777215".into(),
            });
        }
        Ok(Vni(vni))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An Ethernet address.
/// The id of a task: 1 to 64 characters among `[A-Za-z0-9_.]` (Swarm's are 25 lower-case
/// alphanumerics). Its first [`TaskId::SHORT_LEN`] characters name its kernel objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// Length of the short id used in namespace and link names (as `docker ps`).
    pub const SHORT_LEN: usize = 12;

    pub fn new(id: impl Into<String>) -> Result<TaskId> {
        let id = id.into();
        let reason = if id.is_empty() || id.len() > 64 {
            "must be 1 to 64 characters"
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            "may hold only letters, digits, '_' and '.'"
        } else {
            return Ok(TaskId(id));
        };
        Err(Error::InvalidSpec {
            item: format!("task id {id:?}"),
            reason: reason.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first [`TaskId::SHORT_LEN`] characters.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(Self::SHORT_LEN)]
    }

    /// The sandbox-side veth of this task's endpoint, inside a network sandbox.
    pub fn network_port(&self) -> IfName {
        port_name(NETWORK_PORT_PREFIX, self.short())
    }

    /// The daemon-side veth of this task's gateway link, on the gateway bridge.
    pub fn gateway_port(&self) -> IfName {
        port_name(GATEWAY_PORT_PREFIX, self.short())
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `prefix` + a short id: at most 2 + 12 bytes of checked characters, so always a valid name.
pub(crate) fn port_name(prefix: &str, short: &str) -> IfName {
    IfName::new(format!("{prefix}{short}")).expect("2-byte prefix + 12 checked chars is an ifname")
}

/// The network sandbox port name for a task whose short id is `short`.
pub(crate) fn network_port_of_short(short: &str) -> IfName {
    port_name(NETWORK_PORT_PREFIX, short)
}

/// The gateway port name for a task whose short id is `short`.
pub(crate) fn gateway_port_of_short(short: &str) -> IfName {
    port_name(GATEWAY_PORT_PREFIX, short)
}

/// The staging name of the VXLAN device of `vni` in the daemon's namespace.
pub(crate) fn vxlan_staging_name(vni: Vni) -> IfName {
    IfName::new(format!("{VXLAN_STAGING_PREFIX}{}", vni.get())).expect("3 + 8 digits is an ifname")
}

/// The prefix of every namespace one daemon owns, unique per daemon on a machine (namespace
/// names under `/run/netns` are machine-wide), e.g. `mesh-ab12cd-`.
///
/// A namespace is ours exactly when its name is the prefix followed by a rest that holds no
/// `-`: so with prefixes `mesh-a-` and `mesh-a-b-` neither daemon ever claims the other's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prefix(String);

/// What a namespace name with our prefix stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedName {
    /// `{prefix}n{vni}`: the sandbox of an overlay network.
    Network(Vni),
    /// `{prefix}t{short task id}`: the sandbox of a task.
    Task(String),
    /// Ours by prefix but of no known shape (left by another version, or by hand).
    Stray,
}

impl Prefix {
    pub fn new(prefix: impl Into<String>) -> Result<Prefix> {
        let prefix = prefix.into();
        let reason = if prefix.len() < 2 || prefix.len() > 64 {
            "must be 2 to 64 characters"
        } else if !prefix.ends_with('-') {
            "must end with '-'"
        } else if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            "may hold only letters, digits, '-', '_' and '.'"
        } else {
            return Ok(Prefix(prefix));
        };
        Err(Error::InvalidSpec {
            item: format!("namespace prefix {prefix:?}"),
            reason: reason.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{prefix}n{vni}`.
    pub fn network_netns(&self, vni: Vni) -> String {
        format!("{}n{}", self.0, vni.get())
    }

    /// `{prefix}t{short id}`.
    pub fn task_netns(&self, id: &TaskId) -> String {
        self.task_netns_of_short(id.short())
    }

    pub(crate) fn task_netns_of_short(&self, short: &str) -> String {
        format!("{}t{}", self.0, short)
    }

    /// `None` if `name` is not ours, else what it stands for.
    pub fn parse(&self, name: &str) -> Option<OwnedName> {
        let rest = name.strip_prefix(self.0.as_str())?;
        if rest.is_empty() || rest.contains('-') {
            return None;
        }
        if let Some(digits) = rest.strip_prefix('n')
            && let Ok(n) = digits.parse::<u32>()
            && n.to_string() == digits
            && let Ok(vni) = Vni::new(n)
        {
            return Some(OwnedName::Network(vni));
        }
        if let Some(short) = rest.strip_prefix('t')
            && TaskId::new(short).is_ok()
            && short.len() <= TaskId::SHORT_LEN
        {
            return Some(OwnedName::Task(short.to_owned()));
        }
        Some(OwnedName::Stray)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_and_parsed_back() {
        let p = Prefix::new("mesh-ab12cd-").unwrap();
        let vni = Vni::new(4097).unwrap();
        let task = TaskId::new("abcdefghijklmnopqrstuvwxy").unwrap();
        assert_eq!(p.network_netns(vni), "mesh-ab12cd-n4097");
        assert_eq!(p.task_netns(&task), "mesh-ab12cd-tabcdefghijkl");
        assert_eq!(task.network_port().as_str(), "vnabcdefghijkl");
        assert_eq!(task.gateway_port().as_str(), "vgabcdefghijkl");
        assert_eq!(p.parse("mesh-ab12cd-n4097"), Some(OwnedName::Network(vni)));
        assert_eq!(
            p.parse("mesh-ab12cd-tabcdefghijkl"),
            Some(OwnedName::Task("abcdefghijkl".into()))
        );
        assert_eq!(p.parse("mesh-ab12cd-n04097"), Some(OwnedName::Stray));
        assert_eq!(p.parse("mesh-ab12cd-x"), Some(OwnedName::Stray));
        // Not ours: another prefix, or a longer prefix that merely starts like ours.
        assert_eq!(p.parse("mesh-ab12ce-n4097"), None);
        assert_eq!(p.parse("mesh-ab12cd-other-n4097"), None);
        assert_eq!(p.parse("mesh-ab12cd-"), None);
    }

    #[test]
    fn bad_inputs_are_refused_with_their_name() {
        assert!(Vni::new(0).is_err() && Vni::new(1 << 24).is_err());
        for bad in ["", "a-b", "a/b", &"x".repeat(65)] {
            let err = TaskId::new(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        for bad in ["mesh", "-", "mesh/x-", "mesh x-"] {
            assert!(Prefix::new(bad).is_err(), "{bad}");
        }
    }
}
