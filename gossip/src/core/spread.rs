//! How records move between nodes: who receives a push, how pushes are batched into
//! datagrams, how incoming records are judged and merged, the owner's repair of stale copies,
//! and the anti-entropy exchange. The rules are explained in the parent module's doc.

use tokio::time::Instant;
use tracing::{debug, trace};

use rand::seq::IndexedRandom;

use super::{Core, MAX_PENDING_PER_OWNER, MEMBERSHIP_SCOPE, encoded_len};
use crate::identity::NodeIdentity;
use crate::io::TransmitKind;
use crate::records::{Record, RecordEventKind, Version};
use crate::wire::{Body, SyncState};

impl Core {
    /// Live listed members that may receive records of `scope` (everyone for the membership
    /// scope).
    pub(super) fn recipients(&self, scope: &str) -> Vec<NodeIdentity> {
        let mut out: Vec<NodeIdentity> = self
            .active
            .values()
            .filter(|id| self.peers.contains_key(&*id.node_id))
            .filter(|id| {
                scope == MEMBERSHIP_SCOPE
                    || self.table.is_live(MEMBERSHIP_SCOPE, &id.node_id, scope)
            })
            .cloned()
            .collect();
        // HashMap order is random per process: sort so seeded runs repeat.
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// Scopes this node and `node_id` both joined.
    pub(super) fn shared_scopes(&self, node_id: &str) -> Vec<String> {
        self.scopes
            .iter()
            .filter(|s| self.table.is_live(MEMBERSHIP_SCOPE, node_id, s))
            .cloned()
            .collect()
    }

    pub(super) fn write_own(
        &mut self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        deleted: bool,
        now: Instant,
    ) -> Record {
        self.counter += 1;
        let record = Record {
            scope: scope.to_owned(),
            key: key.to_owned(),
            owner: self.identity.node_id.to_string(),
            version: Version {
                incarnation: self.identity.incarnation,
                counter: self.counter,
            },
            value,
            deleted,
        };
        match self.table.merge(record.clone(), now) {
            Ok(Some(event)) => self.emit(vec![event]),
            Ok(None) => {}
            // Only a scope join can get here at the bound (writes check it first): the
            // membership record is still pushed, so peers learn of the join.
            Err(e) => debug!(error = %e, "own record not kept"),
        }
        record
    }

    pub(super) fn membership_probe(&self, scope: &str) -> Record {
        Record {
            scope: MEMBERSHIP_SCOPE.to_owned(),
            key: scope.to_owned(),
            owner: self.identity.node_id.to_string(),
            version: Version {
                incarnation: u64::MAX,
                counter: u64::MAX,
            },
            value: Vec::new(),
            deleted: false,
        }
    }

    pub(super) fn push_scope_records(&mut self, scope: &str, records: Vec<Record>) {
        let to = self.recipients(scope);
        self.push_with_membership(scope, &to, records);
    }

    /// Pushes records of `scope` preceded by this node's membership record for it (alone if
    /// there are no records: the receiver learns this node is in the scope, and if that is
    /// news to it, answers with its own records).
    pub(super) fn push_with_membership(
        &mut self,
        scope: &str,
        to: &[NodeIdentity],
        records: Vec<Record>,
    ) {
        let me = self.identity.node_id.to_string();
        let membership = self.table.get(MEMBERSHIP_SCOPE, &me, scope).cloned();
        if to.is_empty() || (records.is_empty() && membership.is_none()) {
            return;
        }
        let budget = self.config.push_budget();
        let membership_len = membership.as_ref().map_or(0, encoded_len);
        let mut batch: Vec<Record> = membership.iter().cloned().collect();
        let mut size = membership_len;
        for record in records {
            let len = encoded_len(&record);
            if size + len > budget && batch.len() > usize::from(membership.is_some()) {
                self.push(to, std::mem::take(&mut batch));
                batch.extend(membership.iter().cloned());
                size = membership_len;
            }
            size += len;
            batch.push(record);
        }
        self.push(to, batch);
    }

    /// Sends this node's membership records (tombstones too) to a member that just came up.
    pub(super) fn push_membership_to(&mut self, peer: &NodeIdentity) {
        let me = self.identity.node_id.to_string();
        let records: Vec<Record> = self.table.owned(MEMBERSHIP_SCOPE, &me).cloned().collect();
        if records.is_empty() {
            return;
        }
        let budget = self.config.push_budget();
        let mut batch = Vec::new();
        let mut size = 0;
        for record in records {
            let len = encoded_len(&record);
            if size + len > budget && !batch.is_empty() {
                self.push(std::slice::from_ref(peer), std::mem::take(&mut batch));
                size = 0;
            }
            size += len;
            batch.push(record);
        }
        self.push(std::slice::from_ref(peer), batch);
    }

    /// One sealed datagram with `records` (already sized to fit) to each of `to`.
    pub(super) fn push(&mut self, to: &[NodeIdentity], records: Vec<Record>) {
        if to.is_empty() || records.is_empty() {
            return;
        }
        let Some(sealed) = self.seal(Body::Push(records)) else {
            return;
        };
        for peer in to {
            self.transmit(peer.addr, TransmitKind::Records, sealed.clone());
        }
    }

    pub(super) fn merge_remote(&mut self, records: Vec<Record>, now: Instant) {
        // Records out of bounds are dropped one by one; the rest of the packet still counts.
        let records = records.into_iter().filter(|r| match r.check() {
            Ok(()) => true,
            Err(e) => {
                self.stats.records_rejected += 1;
                debug!(error = %e, "record out of bounds");
                false
            }
        });
        // Membership first: records of a scope are judged against the membership carried in
        // the same packet.
        let (membership, rest): (Vec<Record>, Vec<Record>) =
            records.partition(|r| r.scope == MEMBERSHIP_SCOPE);
        for record in membership.into_iter().chain(rest) {
            self.merge_one(record, now);
        }
    }

    pub(super) fn merge_one(&mut self, record: Record, now: Instant) {
        if *record.owner == *self.identity.node_id {
            self.repair_own(record, now);
            return;
        }
        let is_membership = record.scope == MEMBERSHIP_SCOPE;
        if !is_membership && !self.scopes.contains(&record.scope) {
            // Not a scope of ours (left it, or a relay that does not know yet).
            return;
        }
        let Some(owner) = self
            .active
            .get(&record.owner)
            .filter(|_| self.peers.contains_key(&record.owner))
        else {
            if self.peers.contains_key(&record.owner) {
                trace!(owner = %record.owner, "record of a node not alive here yet, holding it");
                let held = self.pending.entry(record.owner.clone()).or_default();
                if held.len() >= MAX_PENDING_PER_OWNER {
                    held.pop_front();
                }
                held.push_back(record);
            } else {
                self.stats.records_rejected += 1;
            }
            return;
        };
        if record.version.incarnation < owner.incarnation {
            self.stats.records_rejected += 1;
            trace!(owner = %record.owner, "record of an earlier start");
            return;
        }
        if !is_membership
            && !self
                .table
                .is_live(MEMBERSHIP_SCOPE, &record.owner, &record.scope)
        {
            self.stats.records_rejected += 1;
            trace!(owner = %record.owner, scope = %record.scope, "record of a node not in its scope");
            return;
        }
        let owner = owner.clone();
        let event = match self.table.merge(record, now) {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                self.stats.records_rejected += 1;
                debug!(error = %e, "record refused");
                return;
            }
        };
        if !is_membership {
            self.emit(vec![event]);
            return;
        }
        // A membership change: the owner joined or left scope `event.key`.
        let scope = event.key;
        match event.kind {
            RecordEventKind::Upsert(_) => {
                debug!(node_id = %owner.node_id, scope, "member joined scope");
                // Answer with our records and our own membership of the scope: the newcomer
                // may have missed that membership (pushed before it saw us alive), and only
                // news of it makes it push its records to us. News happens once per version,
                // so this does not ping-pong.
                if self.scopes.contains(&scope) {
                    let me = self.identity.node_id.to_string();
                    let mine: Vec<Record> = self.table.owned(&scope, &me).cloned().collect();
                    self.push_with_membership(&scope, &[owner], mine);
                }
            }
            RecordEventKind::Removed => {
                debug!(node_id = %owner.node_id, scope, "member left scope");
                let events = self
                    .table
                    .remove_where(|r| r.scope == scope && *r.owner == *owner.node_id);
                self.emit(events);
            }
        }
    }

    pub(super) fn replay_pending(&mut self, node_id: &str, now: Instant) {
        if let Some(held) = self.pending.remove(node_id) {
            debug!(
                node_id,
                records = held.len(),
                "replaying records held until the owner came up"
            );
            self.merge_remote(held.into(), now);
        }
    }

    /// A peer holds a live record of ours that we do not: answer with a fresh tombstone.
    pub(super) fn repair_own(&mut self, record: Record, now: Instant) {
        if record.deleted
            || record.version.incarnation > self.identity.incarnation
            || self
                .table
                .get(&record.scope, &record.owner, &record.key)
                .is_some()
        {
            return;
        }
        debug!(scope = %record.scope, key = %record.key, "stale copy of an own record, tombstoning it");
        let tomb = self.write_own(&record.scope, &record.key, Vec::new(), true, now);
        if record.scope == MEMBERSHIP_SCOPE {
            let to = self.recipients(MEMBERSHIP_SCOPE);
            self.push(&to, vec![tomb]);
        } else {
            let to = self.recipients(&record.scope);
            self.push(&to, vec![tomb]);
        }
    }

    /// What this node sends in a sync: its membership table and the tables of the scopes
    /// `shared` selects.
    pub(super) fn sync_state(&self, shared: impl Fn(&str) -> bool) -> SyncState {
        let mut records: Vec<Record> = self.table.all(MEMBERSHIP_SCOPE).cloned().collect();
        for scope in self.scopes.iter().filter(|s| shared(s)) {
            records.extend(self.table.all(scope).cloned());
        }
        SyncState {
            scopes: self.scopes.iter().cloned().collect(),
            records,
        }
    }

    pub(super) fn request_sync(&mut self, peer: &NodeIdentity) {
        let node_id = peer.node_id.to_string();
        let state = self.sync_state(|scope| self.table.is_live(MEMBERSHIP_SCOPE, &node_id, scope));
        debug!(node_id, records = state.records.len(), "starting sync");
        if let Some(sealed) = self.seal(Body::SyncRequest(state)) {
            self.transmit(peer.addr, TransmitKind::SyncRequest, sealed);
        }
    }

    /// Picks a random live peer sharing a scope (any live peer if none does: the membership
    /// table is shared by all) and syncs with it.
    pub(super) fn anti_entropy(&mut self) {
        let live = self.recipients(MEMBERSHIP_SCOPE);
        let sharing: Vec<NodeIdentity> = live
            .iter()
            .filter(|p| !self.shared_scopes(&p.node_id).is_empty())
            .cloned()
            .collect();
        let pool = if sharing.is_empty() { live } else { sharing };
        if let Some(peer) = pool.choose(&mut self.rng).cloned() {
            self.request_sync(&peer);
        }
    }
}
