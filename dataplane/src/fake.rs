//! The in-memory kernel the fakes share (feature `fake`): the daemon's namespace and the named
//! namespaces, each holding what every fake keeps there.
//!
//! The overlay's, the load balancer's and the routing mesh's fakes each keep their state of a
//! namespace as one *part* of it ([`Parts`]: at most one value per type). So they agree on
//! which namespaces exist without knowing each other's types, and removing a namespace drops
//! every part of it at once, as the kernel drops everything a namespace held: the load
//! balancer of a task whose sandbox the overlay removed is gone with it.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::netns::At;

/// A handle on one shared in-memory kernel; clones share it.
#[derive(Clone, Debug, Default)]
pub struct FakeNet(Arc<Mutex<World>>);

impl FakeNet {
    /// A kernel with only the daemon's namespace.
    pub fn new() -> FakeNet {
        FakeNet::default()
    }

    /// The kernel, to read or to change (fakes do it for each call; tests to inspect it or to
    /// change it behind the fakes' back).
    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The namespaces of the fake kernel, and what each fake keeps world-wide.
#[derive(Debug, Default)]
pub struct World {
    host: Parts,
    named: BTreeMap<String, Parts>,
    shared: Parts,
}

impl World {
    /// Whether the named namespace `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.named.contains_key(name)
    }

    /// The names of the named namespaces, sorted.
    pub fn names(&self) -> Vec<String> {
        self.named.keys().cloned().collect()
    }

    /// The named namespace `name`, created (empty) if absent.
    pub fn ensure(&mut self, name: &str) -> &mut Parts {
        self.named.entry(name.to_owned()).or_default()
    }

    /// Removes the named namespace `name` with everything in it; absent is fine.
    pub fn remove(&mut self, name: &str) {
        self.named.remove(name);
    }

    /// The namespace `at`, if it exists.
    pub fn get(&self, at: &At) -> Option<&Parts> {
        match at {
            At::Host => Some(&self.host),
            At::Netns(name) => self.named.get(name),
        }
    }

    /// The namespace `at`; the error the kernel gives for a named namespace that does not
    /// exist.
    pub fn require(&mut self, at: &At) -> Result<&mut Parts> {
        match at {
            At::Host => Ok(&mut self.host),
            At::Netns(name) => self.named.get_mut(name).ok_or_else(|| netns_missing(name)),
        }
    }

    /// World-wide state of one fake (counters, logs), created by `Default` on first use.
    pub fn shared<T: Any + Send + Default>(&mut self) -> &mut T {
        self.shared.get_mut()
    }
}

/// What the fakes keep in one namespace: at most one value per type.
#[derive(Default)]
pub struct Parts(BTreeMap<TypeId, Box<dyn Any + Send>>);

impl Parts {
    /// The part of type `T`, if some fake has put one here.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The part of type `T`, created by `Default` if absent.
    pub fn get_mut<T: Any + Send + Default>(&mut self) -> &mut T {
        self.0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut()
            .expect("a part is stored under its own type id")
    }
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parts({} kinds)", self.0.len())
    }
}

/// What opening a named namespace that does not exist gives on Linux.
pub fn netns_missing(name: &str) -> Error {
    Error::Netns {
        op: "open",
        name: name.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Counter(u32);

    #[test]
    fn parts_go_with_their_namespace() {
        let net = FakeNet::new();
        let mut w = net.lock();
        w.ensure("a").get_mut::<Counter>().0 = 3;
        let at = At::Netns("a".into());
        assert_eq!(
            w.get(&at).and_then(Parts::get::<Counter>),
            Some(&Counter(3))
        );
        w.remove("a");
        assert!(w.get(&at).is_none());
        let err = w.require(&at).unwrap_err();
        assert!(err.is_missing_netns(), "{err}");
        w.ensure("a");
        assert_eq!(w.get(&at).and_then(Parts::get::<Counter>), None);
        w.shared::<Counter>().0 += 1;
        assert_eq!(w.shared::<Counter>(), &Counter(1));
    }
}
