//! Netlink handles of one thread in several namespaces.
//!
//! A socket stays bound to the namespace it was opened in. So a thread that works in a home
//! namespace (the daemon's) enters another namespace just long enough to open a socket there
//! and goes back: one thread and one socket per namespace serve a whole batch of operations,
//! and nothing runs in another namespace on a thread that outlives the batch.

use std::collections::HashMap;
use std::os::fd::AsFd;

use nix::sched::CloneFlags;

use super::handle::Netlink;
use crate::error::{Error, Result};
use crate::netns::{At, Netns};

/// The handles of one thread: its home namespace's, and those of the named namespaces opened
/// so far.
pub struct Session<'a> {
    home_ns: &'a Netns,
    home: Netlink,
    named: HashMap<String, (Netns, Netlink)>,
}

impl<'a> Session<'a> {
    /// Must be called on a thread inside `home_ns`, within a tokio runtime.
    pub fn open(home_ns: &'a Netns) -> Result<Session<'a>> {
        Ok(Session {
            home_ns,
            home: Netlink::connect(home_ns.name())?,
            named: HashMap::new(),
        })
    }

    /// The home namespace.
    pub fn home_ns(&self) -> &'a Netns {
        self.home_ns
    }

    /// The handle of the home namespace.
    pub fn home(&self) -> &Netlink {
        &self.home
    }

    /// Opens a handle in the named namespace `name` unless already open: this thread enters
    /// it, connects, and returns home.
    pub fn open_named(&mut self, name: &str) -> Result<()> {
        if self.named.contains_key(name) {
            return Ok(());
        }
        let ns = Netns::open(name)?;
        let enter = |target: &Netns| {
            nix::sched::setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
                Error::Netns {
                    op: "enter",
                    name: target.name().to_owned(),
                    source: errno.into(),
                }
            })
        };
        enter(&ns)?;
        let connected = Netlink::connect(name);
        // Back home before anything else, whatever connect did.
        enter(self.home_ns)?;
        self.named.insert(name.to_owned(), (ns, connected?));
        Ok(())
    }

    /// The namespace `name` and its handle, opened if need be.
    pub fn named(&mut self, name: &str) -> Result<(&Netns, &Netlink)> {
        self.open_named(name)?;
        let (ns, nl) = &self.named[name];
        Ok((ns, nl))
    }

    /// The namespace `name` and its handle, already opened by [`Session::open_named`] (so that
    /// several can be borrowed at once). Panics if it was not.
    pub fn opened(&self, name: &str) -> (&Netns, &Netlink) {
        let (ns, nl) = self.named.get(name).expect("namespace opened before use");
        (ns, nl)
    }

    /// The handle of the namespace `at`, opened if need be.
    pub fn at(&mut self, at: &At) -> Result<&Netlink> {
        match at {
            At::Host => Ok(&self.home),
            At::Netns(name) => Ok(self.named(name)?.1),
        }
    }

    /// Like [`Session::at`], but `None` if the named namespace does not exist: removing
    /// something from an absent namespace is success.
    pub fn at_if_exists(&mut self, at: &At) -> Result<Option<&Netlink>> {
        let At::Netns(name) = at else {
            return Ok(Some(&self.home));
        };
        match self.open_named(name) {
            Ok(()) => Ok(Some(&self.named[name.as_str()].1)),
            Err(e) if e.is_missing_netns() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Drops the handle of `name` (it would keep a removed namespace alive).
    pub fn forget(&mut self, name: &str) {
        self.named.remove(name);
    }
}
