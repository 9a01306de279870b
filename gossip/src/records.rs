//! The replicated endpoint table: [`Record`]s grouped by scope, one writer per record (its
//! owner), merged by [`Version`].
//!
//! A record is identified by `(scope, owner, key)`. Only the owner writes it, so versions are
//! only ever compared between writes of one node and last-writer-wins needs no clock agreement.
//! Deletion leaves a tombstone (kept for `tombstone_ttl_ms`, then swept) so an older live copy
//! met later during anti-entropy cannot bring the record back.
//!
//! Everything here is pure: which records may enter the table (owner alive, scope shared) is
//! decided by the caller ([`super::Core`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Version of a record: the owner's incarnation when it wrote the record, then a counter of
/// the owner's writes. A newer start of a node always wins over anything an older start wrote.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// The owner's identity incarnation at write time.
    pub incarnation: u64,
    /// The owner's write counter.
    pub counter: u64,
}

/// One replicated record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The scope (a network id) the record belongs to.
    pub scope: String,
    /// The key within the scope (an endpoint id).
    pub key: String,
    /// The node that wrote it.
    pub owner: String,
    /// The owner's version of it.
    pub version: Version,
    /// Opaque to gossip.
    pub value: Vec<u8>,
    /// A tombstone: the owner deleted it.
    pub deleted: bool,
}

/// A change of the live view of a scope, as [`super::Gossip::subscribe`] delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordEvent {
    /// The scope.
    pub scope: String,
    /// The key.
    pub key: String,
    /// The owner.
    pub owner: String,
    /// What happened.
    pub kind: RecordEventKind,
}

/// What happened to a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordEventKind {
    /// Created or changed, with its new value.
    Upsert(Vec<u8>),
    /// Deleted by its owner, or withdrawn because the owner died, left the scope or the
    /// cluster, or this node left the scope.
    Removed,
}

impl RecordEvent {
    fn of(record: &Record, kind: RecordEventKind) -> Self {
        Self {
            scope: record.scope.clone(),
            key: record.key.clone(),
            owner: record.owner.clone(),
            kind,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    record: Record,
    /// When this node learned of the tombstone (sweeping uses local time only).
    tombstoned_at: Option<Instant>,
}

/// Records of every scope this node holds, tombstones included.
#[derive(Debug, Default)]
pub(crate) struct Table {
    scopes: BTreeMap<String, BTreeMap<(String, String), Entry>>,
}

impl Table {
    /// Merges one record: kept if it is newer than what is held. Returns the event for the
    /// live view, if it changed.
    pub(crate) fn merge(&mut self, record: Record, now: Instant) -> Option<RecordEvent> {
        let scope = self.scopes.entry(record.scope.clone()).or_default();
        let id = (record.owner.clone(), record.key.clone());
        let previous = scope.get(&id);
        if previous.is_some_and(|e| e.record.version >= record.version) {
            return None;
        }
        let was_live = previous
            .filter(|e| !e.record.deleted)
            .map(|e| e.record.value.clone());
        let event = match (record.deleted, was_live) {
            (true, Some(_)) => Some(RecordEvent::of(&record, RecordEventKind::Removed)),
            (true, None) => None,
            (false, Some(old)) if old == record.value => None,
            (false, _) => Some(RecordEvent::of(
                &record,
                RecordEventKind::Upsert(record.value.clone()),
            )),
        };
        let tombstoned_at = record.deleted.then_some(now);
        scope.insert(
            id,
            Entry {
                record,
                tombstoned_at,
            },
        );
        event
    }

    pub(crate) fn get(&self, scope: &str, owner: &str, key: &str) -> Option<&Record> {
        self.scopes
            .get(scope)?
            .get(&(owner.to_owned(), key.to_owned()))
            .map(|e| &e.record)
    }

    pub(crate) fn is_live(&self, scope: &str, owner: &str, key: &str) -> bool {
        self.get(scope, owner, key).is_some_and(|r| !r.deleted)
    }

    /// Live records of a scope.
    pub(crate) fn live(&self, scope: &str) -> Vec<Record> {
        self.all(scope).filter(|r| !r.deleted).cloned().collect()
    }

    /// Every record of a scope, tombstones included.
    pub(crate) fn all<'a>(&'a self, scope: &str) -> impl Iterator<Item = &'a Record> + 'a {
        self.scopes
            .get(scope)
            .into_iter()
            .flat_map(|s| s.values().map(|e| &e.record))
    }

    /// Records of one owner in one scope, tombstones included.
    pub(crate) fn owned<'a>(
        &'a self,
        scope: &str,
        owner: &'a str,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        self.all(scope).filter(move |r| r.owner == owner)
    }

    /// Forgets every record that `pred` selects, across scopes; events for the live ones.
    pub(crate) fn remove_where(&mut self, pred: impl Fn(&Record) -> bool) -> Vec<RecordEvent> {
        let mut events = Vec::new();
        for scope in self.scopes.values_mut() {
            scope.retain(|_, e| {
                if !pred(&e.record) {
                    return true;
                }
                if !e.record.deleted {
                    events.push(RecordEvent::of(&e.record, RecordEventKind::Removed));
                }
                false
            });
        }
        self.scopes.retain(|_, s| !s.is_empty());
        events
    }

    /// Forgets a whole scope; events for its live records.
    pub(crate) fn drop_scope(&mut self, scope: &str) -> Vec<RecordEvent> {
        self.scopes
            .remove(scope)
            .into_iter()
            .flat_map(|s| s.into_values())
            .filter(|e| !e.record.deleted)
            .map(|e| RecordEvent::of(&e.record, RecordEventKind::Removed))
            .collect()
    }

    /// Scopes holding at least one record (tombstones count).
    #[cfg(test)]
    pub(crate) fn held_scopes(&self) -> Vec<String> {
        self.scopes.keys().cloned().collect()
    }

    /// Sweeps tombstones older than `ttl`. Returns how many went.
    pub(crate) fn sweep_tombstones(&mut self, now: Instant, ttl: std::time::Duration) -> usize {
        let mut swept = 0;
        for scope in self.scopes.values_mut() {
            scope.retain(|_, e| {
                let keep = e
                    .tombstoned_at
                    .is_none_or(|at| now.duration_since(at) < ttl);
                swept += usize::from(!keep);
                keep
            });
        }
        self.scopes.retain(|_, s| !s.is_empty());
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &str, key: &str, inc: u64, counter: u64, value: &[u8], deleted: bool) -> Record {
        Record {
            scope: "net".into(),
            key: key.into(),
            owner: owner.into(),
            version: Version {
                incarnation: inc,
                counter,
            },
            value: value.to_vec(),
            deleted,
        }
    }

    #[test]
    fn gossip_table_newer_version_wins_and_tombstones_block_older_copies() {
        let now = Instant::now();
        let mut t = Table::default();
        let up = |v: &[u8]| Some(RecordEventKind::Upsert(v.to_vec()));
        assert_eq!(
            t.merge(rec("a", "k", 1, 1, b"x", false), now)
                .map(|e| e.kind),
            up(b"x")
        );
        assert_eq!(
            t.merge(rec("a", "k", 1, 1, b"y", false), now),
            None,
            "same version"
        );
        assert_eq!(
            t.merge(rec("a", "k", 1, 2, b"y", false), now)
                .map(|e| e.kind),
            up(b"y")
        );
        assert_eq!(
            t.merge(rec("a", "k", 1, 3, b"y", false), now),
            None,
            "same value"
        );
        assert_eq!(
            t.merge(rec("a", "k", 1, 4, b"", true), now).map(|e| e.kind),
            Some(RecordEventKind::Removed)
        );
        assert_eq!(
            t.merge(rec("a", "k", 1, 2, b"y", false), now),
            None,
            "older copy"
        );
        assert!(t.live("net").is_empty());
        assert_eq!(
            t.merge(rec("a", "k", 2, 0, b"z", false), now)
                .map(|e| e.kind),
            up(b"z")
        );
        // same key, other owner: a separate record
        assert!(t.merge(rec("b", "k", 1, 1, b"w", false), now).is_some());
        assert_eq!(t.live("net").len(), 2);
        let gone = t.remove_where(|r| r.owner == "a");
        assert_eq!(gone.len(), 1);
        assert_eq!(t.live("net").len(), 1);
    }

    #[test]
    fn gossip_table_sweeps_only_old_tombstones() {
        let now = Instant::now();
        let mut t = Table::default();
        t.merge(rec("a", "k1", 1, 1, b"", true), now);
        t.merge(rec("a", "k2", 1, 1, b"v", false), now);
        let ttl = std::time::Duration::from_secs(10);
        assert_eq!(t.sweep_tombstones(now + ttl / 2, ttl), 0);
        assert_eq!(t.sweep_tombstones(now + ttl, ttl), 1);
        assert_eq!(t.all("net").count(), 1);
    }
}
