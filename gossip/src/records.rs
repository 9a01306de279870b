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

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::GossipError;
use crate::identity::{MAX_NODE_ID_LEN, validate_node_id};

/// Longest scope name or record key, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Largest record value, in bytes (more than any datagram carries: a push must fit one).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most records (tombstones included) one node may own across all scopes.
pub const MAX_RECORDS_PER_NODE: usize = 65_536;

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

impl Record {
    /// Checks the bounds every record keeps, whoever wrote it: an owner that is a valid node
    /// id, a key of 1 to [`MAX_NAME_LEN`] bytes, a scope of at most [`MAX_NAME_LEN`] bytes
    /// (empty only for the internal membership scope, whose keys are scopes), and a value of
    /// at most [`MAX_VALUE_LEN`] bytes.
    pub fn check(&self) -> Result<(), GossipError> {
        let reason = if validate_node_id(&self.owner).is_err() {
            "the owner is not a valid node id"
        } else if self.key.is_empty() {
            "the key is empty"
        } else if self.key.len() > MAX_NAME_LEN {
            "the key is longer than 256 bytes"
        } else if self.scope.len() > MAX_NAME_LEN {
            "the scope is longer than 256 bytes"
        } else if self.value.len() > MAX_VALUE_LEN {
            "the value is longer than 65536 bytes"
        } else {
            return Ok(());
        };
        let cut = |s: &str, max: usize| s.chars().take(max).collect::<String>();
        Err(GossipError::InvalidRecord {
            owner: cut(&self.owner, MAX_NODE_ID_LEN),
            scope: cut(&self.scope, MAX_NAME_LEN),
            key: cut(&self.key, MAX_NAME_LEN),
            reason,
        })
    }
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
    /// How many records each owner has in `scopes`, for [`MAX_RECORDS_PER_NODE`].
    owned: HashMap<String, usize>,
}

impl Table {
    /// Merges one record: kept if it is newer than what is held. Returns the event for the
    /// live view, if it changed.
    pub(crate) fn merge(
        &mut self,
        record: Record,
        now: Instant,
    ) -> Result<Option<RecordEvent>, GossipError> {
        let id = (record.owner.clone(), record.key.clone());
        let held = self.scopes.get(&record.scope).and_then(|s| s.get(&id));
        if held.is_none() && self.owned_by(&record.owner) >= MAX_RECORDS_PER_NODE {
            return Err(GossipError::TooManyRecords {
                owner: record.owner,
                max: MAX_RECORDS_PER_NODE,
            });
        }
        let scope = self.scopes.entry(record.scope.clone()).or_default();
        let previous = scope.get(&id);
        if previous.is_some_and(|e| e.record.version >= record.version) {
            return Ok(None);
        }
        if previous.is_none() {
            *self.owned.entry(record.owner.clone()).or_default() += 1;
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
        Ok(event)
    }

    /// How many records (tombstones included) `owner` has here, across scopes.
    pub(crate) fn owned_by(&self, owner: &str) -> usize {
        self.owned.get(owner).copied().unwrap_or(0)
    }

    /// Counts a record of `owner` as gone.
    fn forget_one(owned: &mut HashMap<String, usize>, owner: &str) {
        if let Some(n) = owned.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                owned.remove(owner);
            }
        }
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
        let owned = &mut self.owned;
        for scope in self.scopes.values_mut() {
            scope.retain(|_, e| {
                if !pred(&e.record) {
                    return true;
                }
                if !e.record.deleted {
                    events.push(RecordEvent::of(&e.record, RecordEventKind::Removed));
                }
                Self::forget_one(owned, &e.record.owner);
                false
            });
        }
        self.scopes.retain(|_, s| !s.is_empty());
        events
    }

    /// Forgets a whole scope; events for its live records.
    pub(crate) fn drop_scope(&mut self, scope: &str) -> Vec<RecordEvent> {
        let entries = self
            .scopes
            .remove(scope)
            .into_iter()
            .flat_map(|s| s.into_values());
        let mut events = Vec::new();
        for e in entries {
            Self::forget_one(&mut self.owned, &e.record.owner);
            if !e.record.deleted {
                events.push(RecordEvent::of(&e.record, RecordEventKind::Removed));
            }
        }
        events
    }

    /// Scopes holding at least one record (tombstones count).
    #[cfg(test)]
    pub(crate) fn held_scopes(&self) -> Vec<String> {
        self.scopes.keys().cloned().collect()
    }

    /// Sweeps tombstones older than `ttl`. Returns how many went.
    pub(crate) fn sweep_tombstones(&mut self, now: Instant, ttl: std::time::Duration) -> usize {
        let mut swept = 0;
        let owned = &mut self.owned;
        for scope in self.scopes.values_mut() {
            scope.retain(|_, e| {
                let keep = e
                    .tombstoned_at
                    .is_none_or(|at| now.duration_since(at) < ttl);
                if !keep {
                    swept += 1;
                    Self::forget_one(owned, &e.record.owner);
                }
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

    impl Table {
        fn merge_ok(&mut self, record: Record, now: Instant) -> Option<RecordEvent> {
            self.merge(record, now).expect("within bounds")
        }
    }

    #[test]
    fn gossip_record_bounds_are_checked() {
        assert!(rec("a", "k", 1, 1, b"v", false).check().is_ok());
        let bad = |f: &dyn Fn(&mut Record)| {
            let mut r = rec("a", "k", 1, 1, b"v", false);
            f(&mut r);
            match r.check() {
                Err(GossipError::InvalidRecord { reason, .. }) => reason,
                other => panic!("{r:?} passed: {other:?}"),
            }
        };
        assert!(bad(&|r| r.owner = String::new()).contains("owner"));
        assert!(bad(&|r| r.owner = "n".repeat(MAX_NODE_ID_LEN + 1)).contains("owner"));
        assert!(bad(&|r| r.key = String::new()).contains("key"));
        assert!(bad(&|r| r.key = "k".repeat(MAX_NAME_LEN + 1)).contains("key"));
        assert!(bad(&|r| r.scope = "s".repeat(MAX_NAME_LEN + 1)).contains("scope"));
        assert!(bad(&|r| r.value = vec![0; MAX_VALUE_LEN + 1]).contains("value"));
        let mut r = rec("a", "k", 1, 1, b"v", false);
        r.key = "é".repeat(1000);
        let Err(GossipError::InvalidRecord { key, .. }) = r.check() else {
            panic!("a long key passed");
        };
        assert!(key.len() <= 2 * MAX_NAME_LEN, "the error carries a cut key");
    }

    #[test]
    fn gossip_table_bounds_the_records_of_one_owner() {
        let now = Instant::now();
        let mut t = Table::default();
        for i in 0..MAX_RECORDS_PER_NODE {
            t.merge_ok(rec("a", &format!("k{i}"), 1, 1, b"v", false), now);
        }
        let err = t.merge(rec("a", "one-more", 1, 1, b"v", false), now);
        assert!(matches!(err, Err(GossipError::TooManyRecords { .. })));
        // Held records still change; other owners are not affected.
        assert!(t.merge_ok(rec("a", "k0", 1, 2, b"w", false), now).is_some());
        assert!(t.merge_ok(rec("b", "k0", 1, 1, b"v", false), now).is_some());
        // Room comes back as records go.
        t.remove_where(|r| r.owner == "a" && r.key == "k1");
        assert!(
            t.merge_ok(rec("a", "one-more", 1, 1, b"v", false), now)
                .is_some()
        );
        assert_eq!(t.owned_by("a"), MAX_RECORDS_PER_NODE);
        t.drop_scope("net");
        assert_eq!((t.owned_by("a"), t.owned_by("b")), (0, 0));
    }

    #[test]
    fn gossip_table_newer_version_wins_and_tombstones_block_older_copies() {
        let now = Instant::now();
        let mut t = Table::default();
        let up = |v: &[u8]| Some(RecordEventKind::Upsert(v.to_vec()));
        assert_eq!(
            t.merge_ok(rec("a", "k", 1, 1, b"x", false), now)
                .map(|e| e.kind),
            up(b"x")
        );
        assert_eq!(
            t.merge_ok(rec("a", "k", 1, 1, b"y", false), now),
            None,
            "same version"
        );
        assert_eq!(
            t.merge_ok(rec("a", "k", 1, 2, b"y", false), now)
                .map(|e| e.kind),
            up(b"y")
        );
        assert_eq!(
            t.merge_ok(rec("a", "k", 1, 3, b"y", false), now),
            None,
            "same value"
        );
        assert_eq!(
            t.merge_ok(rec("a", "k", 1, 4, b"", true), now)
                .map(|e| e.kind),
            Some(RecordEventKind::Removed)
        );
        assert_eq!(
            t.merge_ok(rec("a", "k", 1, 2, b"y", false), now),
            None,
            "older copy"
        );
        assert!(t.live("net").is_empty());
        assert_eq!(
            t.merge_ok(rec("a", "k", 2, 0, b"z", false), now)
                .map(|e| e.kind),
            up(b"z")
        );
        // same key, other owner: a separate record
        assert!(t.merge_ok(rec("b", "k", 1, 1, b"w", false), now).is_some());
        assert_eq!(t.live("net").len(), 2);
        let gone = t.remove_where(|r| r.owner == "a");
        assert_eq!(gone.len(), 1);
        assert_eq!(t.live("net").len(), 1);
    }

    #[test]
    fn gossip_table_sweeps_only_old_tombstones() {
        let now = Instant::now();
        let mut t = Table::default();
        t.merge_ok(rec("a", "k1", 1, 1, b"", true), now);
        t.merge_ok(rec("a", "k2", 1, 1, b"v", false), now);
        let ttl = std::time::Duration::from_secs(10);
        assert_eq!(t.sweep_tombstones(now + ttl / 2, ttl), 0);
        assert_eq!(t.sweep_tombstones(now + ttl, ttl), 1);
        assert_eq!(t.all("net").count(), 1);
    }
}
