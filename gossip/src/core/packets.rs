//! What arrives and what leaves: datagrams and anti-entropy frames handed in by the driver,
//! and every packet sealed with the keyring (and opened, dropping what does not authenticate
//! or comes from a node not listed) on its way out.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::Core;
use crate::crypto::Keyring;
use crate::identity::NodeIdentity;
use crate::io::{Transmit, TransmitKind};
use crate::wire::{Body, Envelope};

impl Core {
    /// Replaces the keyring (newest key first). Takes effect for the next packet.
    pub fn set_keys(&mut self, keys: Keyring) {
        info!(key_ids = ?keys.key_ids(), "gossip keyring replaced");
        self.keys = keys;
    }

    /// A datagram arrived.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        if self.left {
            return;
        }
        let Some(envelope) = self.open(from, data, now) else {
            return;
        };
        match envelope.body {
            Body::Swim(bytes) => {
                if let Err(e) = self.foca.handle_data(&bytes, &mut self.rt) {
                    trace!(%from, error = %e, "swim packet refused");
                }
            }
            Body::Push(records) => {
                trace!(%from, node_id = %envelope.from, records = records.len(), "record push");
                self.merge_remote(records, now);
            }
            Body::SyncRequest(_) | Body::SyncReply(_) => {
                self.stats.malformed += 1;
                debug!(%from, "sync body in a datagram, ignored");
            }
        }
        self.drain(now);
    }

    /// A peer opened an anti-entropy exchange with `frame`; returns the reply frame (or
    /// `None` to just close the connection).
    pub fn handle_sync_request(
        &mut self,
        from: SocketAddr,
        frame: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        self.stats.packets_in += 1;
        if self.left {
            return None;
        }
        let envelope = self.open(from, frame, now)?;
        let Body::SyncRequest(state) = envelope.body else {
            self.stats.malformed += 1;
            debug!(%from, "non-sync body on the sync port, ignored");
            return None;
        };
        debug!(%from, node_id = %envelope.from, records = state.records.len(), "sync request");
        let theirs: BTreeSet<String> = state.scopes.into_iter().collect();
        self.merge_remote(state.records, now);
        let reply = self.sync_state(|scope| theirs.contains(scope));
        let sealed = self.seal(Body::SyncReply(reply));
        if sealed.is_some() {
            self.stats.packets_out += 1;
        }
        self.drain(now);
        sealed
    }

    /// The reply to a sync request this node sent (see [`TransmitKind::SyncRequest`]).
    pub fn handle_sync_reply(&mut self, from: SocketAddr, frame: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        if self.left {
            return;
        }
        let Some(envelope) = self.open(from, frame, now) else {
            return;
        };
        let Body::SyncReply(state) = envelope.body else {
            self.stats.malformed += 1;
            return;
        };
        debug!(%from, node_id = %envelope.from, records = state.records.len(), "sync reply");
        self.stats.syncs_completed += 1;
        self.merge_remote(state.records, now);
        let scopes: Vec<String> = self.scopes.iter().cloned().collect();
        self.synced.extend(scopes);
        self.drain(now);
    }

    /// The driver could not complete a sync exchange with `peer`.
    pub fn sync_failed(&mut self, peer: SocketAddr) {
        self.stats.sync_failures += 1;
        debug!(%peer, "sync failed");
    }

    pub(super) fn seal(&mut self, body: Body) -> Option<Vec<u8>> {
        let envelope = Envelope {
            from: self.identity.node_id.clone(),
            body,
        };
        let plain = match postcard::to_stdvec(&envelope) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "encoding a gossip packet");
                return None;
            }
        };
        match self.keys.seal(&plain) {
            Ok(sealed) => Some(sealed),
            Err(e) => {
                warn!(error = %e, "sealing a gossip packet");
                None
            }
        }
    }

    fn open(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> Option<Envelope> {
        let plain = match self.keys.open(data) {
            Ok(p) => p,
            Err(e) => {
                self.stats.auth_failures += 1;
                debug!(%from, len = data.len(), error = %e, "dropped gossip packet");
                return None;
            }
        };
        let envelope: Envelope = match postcard::from_bytes(&plain) {
            Ok(e) => e,
            Err(e) => {
                self.stats.malformed += 1;
                debug!(%from, error = %e, "undecodable gossip packet");
                return None;
            }
        };
        if *envelope.from == *self.identity.node_id || !self.peers.contains_key(&*envelope.from) {
            self.stats.ignored += 1;
            trace!(%from, node_id = %envelope.from, "packet from a node not in the list");
            return None;
        }
        self.last_heard.insert(envelope.from.to_string(), now);
        Some(envelope)
    }

    pub(super) fn transmit(&mut self, to: SocketAddr, kind: TransmitKind, data: Vec<u8>) {
        self.stats.packets_out += 1;
        trace!(%to, ?kind, len = data.len(), "transmit");
        self.transmits.push_back(Transmit { to, kind, data });
    }

    pub(super) fn send_swim(&mut self, to: &NodeIdentity, data: Vec<u8>) {
        if !self.peers.contains_key(&*to.node_id) {
            trace!(node_id = %to.node_id, "not sending to a node not in the list");
            return;
        }
        if let Some(sealed) = self.seal(Body::Swim(data)) {
            self.transmit(to.addr, TransmitKind::Swim, sealed);
        }
    }
}
