//! The local API of records: joining and leaving scopes, writing and deleting this node's own
//! records, reading the live table, and the events subscribers get. Names are checked here.

use rand::seq::IndexedRandom;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, trace};

use super::{Core, MAX_NAME_LEN, MEMBERSHIP_SCOPE, encoded_len};
use crate::error::GossipError;
use crate::identity::NodeIdentity;
use crate::records::{MAX_RECORDS_PER_NODE, Record, RecordEvent, Version};

impl Core {
    /// Joins a scope: its records start flowing to this node (idempotent).
    pub fn join_scope(&mut self, scope: &str, now: Instant) -> Result<(), GossipError> {
        validate_scope(scope)?;
        if self.left || !self.scopes.insert(scope.to_owned()) {
            return Ok(());
        }
        info!(scope, "joined gossip scope");
        let record = self.write_own(MEMBERSHIP_SCOPE, scope, Vec::new(), false, now);
        let to = self.recipients(MEMBERSHIP_SCOPE);
        self.push(&to, vec![record]);
        // Owners push their records when our membership reaches them; one sync now also
        // fetches what they relay for others and anything whose push is lost.
        let members = self.recipients(scope);
        match members.choose(&mut self.rng).cloned() {
            Some(peer) => self.request_sync(&peer),
            // Nobody else has it: what this node knows of it is all there is.
            None => {
                self.synced.insert(scope.to_owned());
            }
        }
        self.drain(now);
        Ok(())
    }

    /// Leaves a scope: its records are dropped here (with `Removed` events) and stop flowing
    /// to this node; other members withdraw this node's records of it (idempotent).
    pub fn leave_scope(&mut self, scope: &str, now: Instant) -> Result<(), GossipError> {
        validate_scope(scope)?;
        if !self.scopes.remove(scope) {
            return Ok(());
        }
        self.synced.remove(scope);
        info!(scope, "left gossip scope");
        let record = self.write_own(MEMBERSHIP_SCOPE, scope, Vec::new(), true, now);
        let to = self.recipients(MEMBERSHIP_SCOPE);
        self.push(&to, vec![record]);
        let events = self.table.drop_scope(scope);
        self.emit(events);
        self.drain(now);
        Ok(())
    }

    /// Creates or replaces this node's record `key` in `scope` and pushes it to the scope's
    /// members.
    pub fn upsert_local(
        &mut self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        now: Instant,
    ) -> Result<(), GossipError> {
        validate_scope(scope)?;
        validate_key(scope, key)?;
        if !self.scopes.contains(scope) {
            return Err(GossipError::NotInScope {
                scope: scope.to_owned(),
            });
        }
        let probe = Record {
            scope: scope.to_owned(),
            key: key.to_owned(),
            owner: self.identity.node_id.to_string(),
            version: Version {
                incarnation: u64::MAX,
                counter: u64::MAX,
            },
            value,
            deleted: false,
        };
        let size = encoded_len(&probe) + encoded_len(&self.membership_probe(scope));
        let max = self.config.push_budget();
        if size > max {
            return Err(GossipError::RecordTooLarge {
                scope: scope.to_owned(),
                key: key.to_owned(),
                size,
                max,
            });
        }
        if self.left {
            return Ok(());
        }
        let me = &self.identity.node_id;
        if self.table.get(scope, me, key).is_none()
            && self.table.owned_by(me) >= MAX_RECORDS_PER_NODE
        {
            return Err(GossipError::TooManyRecords {
                owner: me.to_string(),
                max: MAX_RECORDS_PER_NODE,
            });
        }
        let record = self.write_own(scope, key, probe.value, false, now);
        self.push_scope_records(scope, vec![record]);
        self.drain(now);
        Ok(())
    }

    /// Deletes this node's record `key` in `scope` (absent is success).
    pub fn delete_local(
        &mut self,
        scope: &str,
        key: &str,
        now: Instant,
    ) -> Result<(), GossipError> {
        validate_scope(scope)?;
        validate_key(scope, key)?;
        let me = self.identity.node_id.clone();
        if self.left || !self.scopes.contains(scope) || !self.table.is_live(scope, &me, key) {
            return Ok(());
        }
        let record = self.write_own(scope, key, Vec::new(), true, now);
        self.push_scope_records(scope, vec![record]);
        self.drain(now);
        Ok(())
    }

    /// Live records of a scope this node joined, its own included.
    /// Whether this node has had a full exchange of `scope`'s records with another member
    /// since it joined it (or it had no other member then): until then, what it holds of the
    /// scope may be only part of it (right after an agent restart, say).
    pub fn scope_synced(&self, scope: &str) -> bool {
        self.synced.contains(scope)
    }

    pub fn records(&self, scope: &str) -> Vec<Record> {
        if scope == MEMBERSHIP_SCOPE || !self.scopes.contains(scope) {
            return Vec::new();
        }
        self.table.live(scope)
    }

    /// The scopes this node joined.
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.iter().cloned().collect()
    }

    /// The live nodes known to have joined `scope` (this node included if it did).
    pub fn scope_members(&self, scope: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .recipients(scope)
            .into_iter()
            .map(|id| id.node_id.to_string())
            .collect();
        if self.scopes.contains(scope) {
            out.push(self.identity.node_id.to_string());
        }
        out.sort();
        out
    }

    /// Scopes this node holds any record of (the membership scope excluded), for tests that
    /// check records never reach a node outside their scope.
    #[cfg(test)]
    pub(crate) fn held_scopes(&self) -> Vec<String> {
        let mut held = self.table.held_scopes();
        held.retain(|s| s != MEMBERSHIP_SCOPE);
        held
    }

    /// A stream of changes to the live records of the joined scopes (this node's own writes
    /// included). Unbounded: a consumer must keep reading.
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<RecordEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.push(tx);
        rx
    }

    /// After a rejoin under a new incarnation every peer dropped this node's records: write
    /// them again under the new incarnation and push them.
    pub(super) fn republish(&mut self, now: Instant) {
        let me = self.identity.node_id.to_string();
        let mut scopes: Vec<String> = vec![MEMBERSHIP_SCOPE.to_owned()];
        scopes.extend(self.scopes.iter().cloned());
        let now_records: Vec<Record> = scopes
            .iter()
            .flat_map(|s| {
                self.table
                    .owned(s, &me)
                    .filter(|r| !r.deleted)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        for mut r in now_records {
            self.counter += 1;
            r.version = Version {
                incarnation: self.identity.incarnation,
                counter: self.counter,
            };
            // The same value under a newer version: no event for local subscribers.
            // (A record already held: the bound on records per node does not apply.)
            let _ = self.table.merge(r, now);
        }
        let peers: Vec<NodeIdentity> = self.recipients(MEMBERSHIP_SCOPE);
        for peer in peers {
            self.push_membership_to(&peer);
            for scope in self.shared_scopes(&peer.node_id) {
                let records: Vec<Record> = self.table.owned(&scope, &me).cloned().collect();
                self.push_with_membership(&scope, std::slice::from_ref(&peer), records);
            }
        }
    }

    pub(super) fn emit(&mut self, events: Vec<RecordEvent>) {
        for event in events {
            if event.scope == MEMBERSHIP_SCOPE {
                continue;
            }
            trace!(scope = %event.scope, key = %event.key, owner = %event.owner, kind = ?event.kind, "record event");
            self.subscribers.retain(|tx| tx.send(event.clone()).is_ok());
        }
    }
}

fn validate_scope(scope: &str) -> Result<(), GossipError> {
    let reason = if scope.is_empty() {
        "is empty"
    } else if scope.len() > MAX_NAME_LEN {
        "is longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(GossipError::Scope {
        scope: scope.to_owned(),
        reason,
    })
}

fn validate_key(scope: &str, key: &str) -> Result<(), GossipError> {
    let reason = if key.is_empty() {
        "is empty"
    } else if key.len() > MAX_NAME_LEN {
        "is longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(GossipError::Key {
        scope: scope.to_owned(),
        key: key.to_owned(),
        reason,
    })
}
