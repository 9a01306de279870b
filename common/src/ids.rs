//! Ids of the cluster's objects as newtypes, so a task id is never passed where a node id is
//! expected, and fresh random ids.
//!
//! Ids the managers hand out are 25 lower-case base32 characters (125 random bits). An id
//! read from the network is checked with [`TaskId::parse`] (and friends) before it is used.

use std::borrow::Borrow;
use std::fmt;

use data_encoding::BASE32_NOPAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The longest id accepted from the network.
pub const MAX_ID_LEN: usize = 64;

/// The system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the random number generator failed")]
pub struct RandomError;

/// `N` random bytes from the system's generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_unspecified| RandomError)?;
    Ok(buf)
}

/// Lower-case base32 without padding, the alphabet of ids, secrets and digests.
pub fn base32_lower(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// A fresh object id: 25 lower-case base32 characters (125 random bits).
pub fn random_id() -> Result<String, RandomError> {
    let mut id = base32_lower(&random_bytes::<16>()?);
    id.truncate(25);
    Ok(id)
}

/// An id that is not usable: empty, too long, or with characters ids never have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind} id {id:?} is not valid: {why}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub id: String,
    pub why: &'static str,
}

fn check(kind: &'static str, id: &str) -> Result<(), InvalidId> {
    let why = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 64 characters"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        "only letters, digits, '-', '_' and '.' may appear in it"
    } else {
        return Ok(());
    };
    Err(InvalidId {
        kind,
        id: id.chars().take(MAX_ID_LEN).collect(),
        why,
    })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// An id the cluster's own store handed out (not checked).
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            /// An id read from outside the store (the network, a user), checked.
            pub fn parse(id: &str) -> Result<$name, InvalidId> {
                check($kind, id)?;
                Ok($name(id.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 12 characters, as `docker ps` shows ids.
            pub fn short(&self) -> &str {
                &self.0[..self.0.len().min(12)]
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_string())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A node (a host running the agent).
    NodeId,
    "node"
);
id_type!(
    /// A task: one process of a service on one node.
    TaskId,
    "task"
);
id_type!(
    /// A service.
    ServiceId,
    "service"
);
id_type!(
    /// A network.
    NetworkId,
    "network"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_the_documented_shape() {
        let a = random_id().unwrap();
        let b = random_id().unwrap();
        assert_eq!(a.len(), 25);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
        );
        assert!(TaskId::parse(&a).is_ok());
    }

    #[test]
    fn ids_from_outside_are_checked() {
        assert_eq!(TaskId::parse("abc").unwrap().as_str(), "abc");
        assert!(TaskId::parse("").is_err());
        assert!(NodeId::parse(&"x".repeat(65)).is_err());
        let err = ServiceId::parse("a/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "service id \"a/b\" is not valid: only letters, digits, '-', '_' and '.' may appear in it"
        );
        assert_eq!(TaskId::new("abcdefghijklmnop").short(), "abcdefghijkl");
    }
}
