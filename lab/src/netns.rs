//! Network namespaces for tests that build their own topology (the dataplane's): a
//! [`NetnsScope`] is a unique prefix that owns every namespace named under it.

use anyhow::{Result, ensure};
use mesh_dataplane::netns::Netns;

use crate::cleanup::{lab_root, owner_pid, remove_lab, remove_stale_labs, tagged_prefix};

/// A unique prefix `<tag><pid>x<n>` owning every namespace `<prefix>-*`: those it creates and
/// those others create under its name (the dataplane's per-host sandboxes, say). Dropping it,
/// also while unwinding from a panic, kills what runs in them and removes them, the most deeply
/// named first. A run that crashes leaves them behind; the next scope or lab removes them,
/// since their owner pid is dead.
#[derive(Debug)]
pub struct NetnsScope {
    prefix: String,
}

impl NetnsScope {
    /// Removes the leftovers of crashed runs, then takes a fresh prefix. `tag` is `m` and
    /// lowercase letters other than `x` (`mdt`, `mlb`), so this run's own leftovers are
    /// recognised the same way.
    pub fn new(tag: &str) -> Result<NetnsScope> {
        ensure!(
            owner_pid(&format!("{tag}1x0")) == Some(1),
            "namespace tag {tag:?} is not `m` followed by lowercase letters other than `x`"
        );
        // Not fatal: a leftover that cannot be removed does not stop this test.
        if let Err(e) = remove_stale_labs(&lab_root()) {
            eprintln!("warning: removing leftovers of crashed runs: {e:#}");
        }
        Ok(NetnsScope {
            prefix: tagged_prefix(tag),
        })
    }

    /// `<tag><pid>x<n>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>-<suffix>`: a name this scope owns.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Creates the namespace [`NetnsScope::name`]`(suffix)`; fails if it exists.
    pub fn create(&self, suffix: &str) -> Result<Netns> {
        Ok(Netns::create(&self.name(suffix))?)
    }
}

impl Drop for NetnsScope {
    fn drop(&mut self) {
        if let Err(e) = remove_lab(&self.prefix, None) {
            eprintln!(
                "network namespaces {}-*: cleanup failed: {e:#}",
                self.prefix
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_must_be_recognisable_as_leftovers() {
        for bad in ["", "x", "md1", "mx", "Md", "mt-", "net"] {
            assert!(NetnsScope::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_unique_and_owned_by_this_process() {
        let (a, b) = (
            NetnsScope::new("mut").unwrap(),
            NetnsScope::new("mut").unwrap(),
        );
        assert_ne!(a.prefix(), b.prefix());
        assert_eq!(owner_pid(a.prefix()), Some(std::process::id()));
        assert_eq!(a.name("h1"), format!("{}-h1", a.prefix()));
    }

    fn exists(name: &str) -> bool {
        Netns::list().unwrap().iter().any(|n| n == name)
    }

    /// Needs root.
    #[test]
    fn namespaces_go_on_drop_and_on_panic_and_leftovers_at_the_next_start() {
        // A crashed run's leftovers: its owner is a pid certainly dead (a child already reaped).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = format!("mut{dead}x0");
        {
            // Other test processes clean leftovers too: not while these are half-made.
            let _lock = crate::cleanup::cleanup_lock(&lab_root()).unwrap();
            for suffix in ["h1", "h1-sandbox"] {
                drop(Netns::create(&format!("{stale}-{suffix}")).unwrap());
            }
        }

        let scope = NetnsScope::new("mut").unwrap();
        assert!(!exists(&format!("{stale}-h1")) && !exists(&format!("{stale}-h1-sandbox")));
        drop(scope.create("h1").unwrap());
        // Named under the scope by someone else (the dataplane's sandboxes).
        drop(Netns::create(&scope.name("h1-net")).unwrap());
        let (h1, net) = (scope.name("h1"), scope.name("h1-net"));
        drop(scope);
        assert!(!exists(&h1) && !exists(&net));

        let mut name = String::new();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let scope = NetnsScope::new("mut").unwrap();
            name = scope.name("p");
            let _ns = scope.create("p").unwrap();
            panic!("a failing test");
        }));
        assert!(unwound.is_err());
        assert!(!exists(&name), "{name} survived the panic");
    }
}
