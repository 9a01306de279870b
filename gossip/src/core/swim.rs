//! SWIM membership: the cluster's node list, who is alive (foca's notifications), nodes declared
//! down locally because they are not listed, rejoining missing peers, and leaving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use foca::{Member, OwnedNotification, State};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::Core;
use crate::identity::{NodeIdentity, Peer};
use crate::io::{Liveness, Membership};

impl Core {
    /// Sets the cluster's node list (idempotent; this node may be in it). Nodes new to the
    /// list and not yet alive are announced to; nodes gone from it are declared down here
    /// (not gossiped), their records withdrawn and their packets ignored from now on.
    pub fn set_peers(&mut self, peers: Vec<Peer>, now: Instant) {
        let me = self.identity.node_id.clone();
        let new: BTreeMap<String, SocketAddr> = peers
            .into_iter()
            .filter(|p| *p.node_id != *me && crate::identity::validate_node_id(&p.node_id).is_ok())
            .map(|p| (p.node_id, p.addr))
            .collect();
        let removed: Vec<String> = self
            .peers
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect();
        let added: Vec<(String, SocketAddr)> = new
            .iter()
            .filter(|(id, _)| !self.peers.contains_key(*id))
            .map(|(id, addr)| (id.clone(), *addr))
            .collect();
        self.peers = new;

        for node_id in removed {
            info!(node_id, "node removed from the cluster, forgetting it");
            if let Some(identity) = self.active.get(&node_id).cloned() {
                self.suppress(identity);
            }
            self.pending.remove(&node_id);
            let events = self.table.remove_where(|r| r.owner == node_id);
            self.emit(events);
        }
        for (node_id, addr) in added {
            if self.left {
                break;
            }
            if let Some(identity) = self.suppressed.remove(&node_id) {
                // We declared it down locally only; let foca forget that so it can come back.
                let _ = self
                    .foca
                    .handle_timer(foca::Timer::RemoveDown(identity), &mut self.rt);
            }
            if !self.active.contains_key(&node_id) {
                debug!(node_id, %addr, "announcing to new peer");
                self.announce(&node_id, addr);
            }
        }
        self.drain(now);
    }

    /// Liveness of a node; this node is always up, an unknown node is down.
    pub fn liveness(&self, node_id: &str) -> Liveness {
        if *self.identity.node_id == *node_id
            || (self.peers.contains_key(node_id) && self.active.contains_key(node_id))
        {
            Liveness::Up
        } else {
            Liveness::Down
        }
    }

    /// Liveness of every listed node.
    pub fn membership(&self) -> Membership {
        self.membership.borrow().clone()
    }

    /// A watch of [`Core::membership`], updated on every change.
    pub fn watch_membership(&self) -> watch::Receiver<Membership> {
        self.membership.subscribe()
    }

    /// Leaves the cluster gracefully: tells a few members this identity is down so the
    /// cluster learns at once instead of by probing. The core is inert afterwards.
    pub fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        info!("leaving the gossip cluster");
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            warn!(error = %e, "foca leave_cluster");
        }
        self.left = true;
        self.drain(now);
    }

    /// Whether a suspicion timer may turn a suspect into a death. Not when the suspect has
    /// talked to this node since the suspicion was raised: it is alive, and what failed was a
    /// blip (often on this node's side: a node cut off for a moment suspects everyone, and its
    /// suspicion updates are spent on the dead link, so nobody learns to refute them). The
    /// member stays suspect here (still up) and a later failed probe arms a new timer, so a
    /// real death is still detected. A small part of Lifeguard, which foca lacks.
    pub(super) fn confirm_down(&self, timer: &foca::Timer<NodeIdentity>, now: Instant) -> bool {
        let foca::Timer::ChangeSuspectToDown { member_id, .. } = timer else {
            return true;
        };
        let raised = now
            .checked_sub(self.config.suspect_to_down())
            .unwrap_or(now);
        match self.last_heard.get(&*member_id.node_id) {
            Some(heard) if *heard > raised => {
                debug!(node_id = %member_id.node_id, "suspect was heard from since, not declaring it down");
                false
            }
            _ => true,
        }
    }

    fn announce(&mut self, node_id: &str, addr: SocketAddr) {
        // foca accepts an Announce addressed to any identity with the right node id, so the
        // incarnation we do not know yet does not matter.
        let dst = NodeIdentity {
            node_id: Arc::from(node_id),
            addr,
            incarnation: 0,
        };
        if let Err(e) = self.foca.announce(dst, &mut self.rt) {
            debug!(node_id, error = %e, "announce");
        }
    }

    /// Announces to every listed peer not seen alive (never met, restarted, partitioned).
    pub(super) fn rejoin(&mut self) {
        let missing: Vec<(String, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(id, _)| !self.active.contains_key(*id))
            .map(|(id, addr)| (id.clone(), *addr))
            .collect();
        for (node_id, addr) in missing {
            trace!(node_id, "announcing to missing peer");
            self.announce(&node_id, addr);
        }
    }

    /// Declares a member down in this node's foca only (not gossiped).
    fn suppress(&mut self, identity: NodeIdentity) {
        let down = Member::new(identity.clone(), 0, State::Down);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(down), false, &mut self.rt)
        {
            debug!(error = %e, "suppressing member");
        }
        self.suppressed
            .insert(identity.node_id.to_string(), identity);
    }

    pub(super) fn on_notification(&mut self, n: OwnedNotification<NodeIdentity>, now: Instant) {
        match n {
            OwnedNotification::MemberUp(id) => {
                let node_id = id.node_id.to_string();
                if !self.peers.contains_key(&node_id) {
                    debug!(node_id, "member not in the node list, ignoring it");
                    self.suppress(id);
                    return;
                }
                info!(node_id, incarnation = id.incarnation, addr = %id.addr, "member up");
                self.active.insert(node_id.clone(), id.clone());
                self.push_membership_to(&id);
                self.replay_pending(&node_id, now);
            }
            OwnedNotification::MemberDown(id) => {
                let node_id = id.node_id.to_string();
                if self
                    .active
                    .get(&node_id)
                    .is_some_and(|cur| cur.incarnation <= id.incarnation)
                {
                    self.active.remove(&node_id);
                    self.pending.remove(&node_id);
                    info!(node_id, incarnation = id.incarnation, "member down");
                }
                let inc = id.incarnation;
                let events = self
                    .table
                    .remove_where(|r| r.owner == node_id && r.version.incarnation <= inc);
                self.emit(events);
            }
            OwnedNotification::Rename(old, new) => {
                let node_id = new.node_id.to_string();
                debug!(
                    node_id,
                    old = old.incarnation,
                    new = new.incarnation,
                    "member renamed"
                );
                let inc = new.incarnation;
                let events = self
                    .table
                    .remove_where(|r| r.owner == node_id && r.version.incarnation < inc);
                self.emit(events);
                if let Some(cur) = self.active.get_mut(&node_id) {
                    // Alive before and after (a fast restart): no MemberUp follows, so greet
                    // the new start here.
                    *cur = new.clone();
                    self.push_membership_to(&new);
                    self.replay_pending(&node_id, now);
                }
            }
            OwnedNotification::Rejoin(new) => {
                warn!(
                    incarnation = new.incarnation,
                    "declared down by the cluster, rejoined"
                );
                self.identity = new;
                self.republish(now);
            }
            OwnedNotification::Active => debug!("gossip connected"),
            OwnedNotification::Idle => debug!("gossip idle: no live member"),
            OwnedNotification::Defunct => warn!("gossip identity declared down and not renewed"),
        }
    }

    pub(super) fn publish_membership(&mut self) {
        let mut view = Membership::new();
        view.insert(self.identity.node_id.to_string(), Liveness::Up);
        for node_id in self.peers.keys() {
            let l = if self.active.contains_key(node_id) {
                Liveness::Up
            } else {
                Liveness::Down
            };
            view.insert(node_id.clone(), l);
        }
        self.membership.send_if_modified(|cur| {
            if *cur == view {
                false
            } else {
                *cur = view;
                true
            }
        });
    }
}
