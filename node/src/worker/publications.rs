//! This node's own endpoints as gossiped: which record each task has published on each
//! network, and which gossip scopes (networks) this node has joined. A record is written only
//! when it changed, and withdrawn before its task stops.

use std::collections::{BTreeMap, BTreeSet};

use mesh_common::NetworkId;
use tracing::warn;

use super::env::Records;
use super::record::Endpoint;

/// What this node publishes, per task (or sandbox) and network.
#[derive(Default)]
pub struct Publications {
    by_task: BTreeMap<String, BTreeMap<NetworkId, Endpoint>>,
    joined: BTreeSet<NetworkId>,
}

impl Publications {
    pub fn joined(&self, network: &NetworkId) -> bool {
        self.joined.contains(network)
    }

    /// The scopes joined.
    pub fn joined_scopes(&self) -> Vec<NetworkId> {
        self.joined.iter().cloned().collect()
    }

    /// Keys (task ids, the ingress sandbox's) with published records.
    pub fn keys(&self) -> Vec<String> {
        self.by_task.keys().cloned().collect()
    }

    /// Publishes `e` on `network` unless that exact record is published already. True when
    /// it was written.
    pub fn publish(&mut self, g: &impl Records, network: &NetworkId, e: &Endpoint) -> bool {
        if !self.joined.contains(network) {
            return false;
        }
        if self.by_task.get(&e.key).and_then(|m| m.get(network)) == Some(e) {
            return false;
        }
        match g.upsert_local(network.as_str(), &e.key, e.to_record().encode()) {
            Ok(()) => {
                self.by_task
                    .entry(e.key.clone())
                    .or_default()
                    .insert(network.clone(), e.clone());
                true
            }
            Err(err) => {
                warn!(task = %e.key, error = %err, "cannot publish endpoint record");
                false
            }
        }
    }

    /// Withdraws every record of `key`; returns the networks it had records on.
    pub fn unpublish(&mut self, g: Option<&impl Records>, key: &str) -> Vec<NetworkId> {
        let Some(networks) = self.by_task.remove(key) else {
            return Vec::new();
        };
        for scope in networks.keys() {
            if let Some(g) = g
                && let Err(e) = g.delete_local(scope.as_str(), key)
            {
                warn!(task = key, error = %e, "cannot withdraw endpoint record");
            }
        }
        networks.into_keys().collect()
    }

    /// Joins the scopes of `wanted` not joined yet and leaves the others. Returns (joined,
    /// left).
    pub fn follow(
        &mut self,
        g: &impl Records,
        wanted: &BTreeSet<NetworkId>,
    ) -> (Vec<NetworkId>, Vec<NetworkId>) {
        let mut joined = Vec::new();
        for scope in wanted.difference(&self.joined.clone()) {
            match g.join_scope(scope.as_str()) {
                Ok(()) => {
                    self.joined.insert(scope.clone());
                    joined.push(scope.clone());
                }
                Err(e) => warn!(scope = %scope, error = %e, "cannot join gossip scope"),
            }
        }
        let mut left = Vec::new();
        for scope in self.joined.clone().difference(wanted) {
            if let Err(e) = g.leave_scope(scope.as_str()) {
                warn!(scope = %scope, error = %e, "cannot leave gossip scope");
            }
            self.joined.remove(scope);
            for networks in self.by_task.values_mut() {
                networks.remove(scope);
            }
            left.push(scope.clone());
        }
        self.by_task.retain(|_, networks| !networks.is_empty());
        (joined, left)
    }

    /// Leaving the cluster: every scope is left.
    pub fn leave_all(&mut self, g: &impl Records) {
        for scope in std::mem::take(&mut self.joined) {
            let _ = g.leave_scope(scope.as_str());
        }
        self.by_task.clear();
    }
}
