//! The services of local sandboxes: each task's DNS server at 127.0.0.11 and each sandbox's
//! load balancer (tasks and the ingress sandbox), kept in line with the endpoint table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mesh_common::NetworkId;
use mesh_dataplane::Kernel;
use mesh_dataplane::lb::LbTable;
use mesh_proto::Task;
use tracing::debug;

use super::assigned::Assigned;
use super::balancers::Balancers;
use super::endpoints::EndpointTable;
use super::env::{Resolvers, netns_path};
use super::sandboxes::{INGRESS_SANDBOX, Sandboxes};

/// What the services are derived from and applied to.
pub struct Ctx<'a> {
    pub kernel: &'a dyn Kernel,
    pub endpoints: &'a EndpointTable,
    pub sandboxes: &'a Sandboxes,
    /// The endpoint table may still be partial (right after an agent restart): load
    /// balancers only gain backends.
    pub keep: bool,
}

/// DNS servers and load balancers of the local sandboxes.
pub struct Services<D: ?Sized> {
    pub dns: Arc<D>,
    pub balancers: Balancers,
    /// Where the DNS servers run (the daemon's runtime, not the worker's thread).
    runtime: tokio::runtime::Handle,
    drain: Duration,
}

fn network_ids(t: &Task) -> Vec<NetworkId> {
    t.networks
        .iter()
        .map(|a| NetworkId::new(a.network_id.clone()))
        .collect()
}

impl<D: Resolvers + ?Sized> Services<D> {
    pub fn new(dns: Arc<D>, runtime: tokio::runtime::Handle, drain: Duration) -> Services<D> {
        Services {
            dns,
            balancers: Balancers::default(),
            runtime,
            drain,
        }
    }

    /// DNS at 127.0.0.11 and the load balancer, in the task's namespace: both ready before
    /// its process starts (and again after an agent restart, for tasks that kept running).
    pub async fn attach(&mut self, c: &Ctx<'_>, t: &Task) -> Result<(), String> {
        let netns = c
            .sandboxes
            .netns(&t.id)
            .ok_or_else(|| format!("task id {:?} is not usable", t.id))?;
        let networks = network_ids(t);
        let dns = self.dns.clone();
        let (task_id, path) = (t.id.clone(), netns_path(&netns));
        let nets = networks.iter().map(|n| n.to_string()).collect();
        self.runtime
            .spawn(async move { dns.attach(&task_id, &path, nets).await })
            .await
            .map_err(|e| e.to_string())??;
        if !self.balancers.has(&t.id) && !self.apply_lb(c, &t.id, &networks) {
            return Err("the load balancer could not be programmed".into());
        }
        Ok(())
    }

    /// Stops serving DNS in the task's namespace and forgets its load balancer.
    pub async fn detach(&mut self, task_id: &str) {
        self.balancers.forget(task_id);
        let dns = self.dns.clone();
        let id = task_id.to_string();
        let _ = self
            .runtime
            .spawn(async move { dns.detach(&id).await })
            .await;
    }

    /// Brings one sandbox's load balancer to what the endpoints say.
    pub fn apply_lb(&mut self, c: &Ctx<'_>, id: &str, networks: &[NetworkId]) -> bool {
        let Some(netns) = c.sandboxes.netns(id) else {
            return false;
        };
        if !c.kernel.netns_exists(&netns) {
            debug!(sandbox = id, "no namespace for the load balancer yet");
            return false;
        }
        let desired = c.endpoints.lb_table(networks);
        self.balancers.apply(
            c.kernel.lb_for(id == super::sandboxes::INGRESS_SANDBOX),
            id,
            &netns,
            desired,
            self.drain,
            c.keep,
        )
    }

    /// Pushes the endpoints of `dirty` networks into DNS and into the load balancer of every
    /// local sandbox attached to one of them. Each balancer is diffed against what it holds,
    /// so a change costs that change.
    pub fn refresh(&mut self, c: &Ctx<'_>, assigned: &Assigned, dirty: &BTreeSet<NetworkId>) {
        c.endpoints.sync_dns(&self.dns.table(), dirty);
        let mut local: Vec<(String, Vec<NetworkId>)> = self
            .balancers
            .sandboxes()
            .into_iter()
            .filter_map(|id| assigned.tasks.get(&id))
            .map(|t| (t.id.clone(), network_ids(t)))
            .filter(|(_, nets)| nets.iter().any(|n| dirty.contains(n)))
            .collect();
        if let Some(a) = &assigned.ingress {
            let n = NetworkId::new(a.network_id.clone());
            if dirty.contains(&n) && self.balancers.has(INGRESS_SANDBOX) {
                local.push((INGRESS_SANDBOX.to_string(), vec![n]));
            }
        }
        // One table per set of networks (most sandboxes share theirs), each sandbox planned
        // against what it holds, the namespaces programmed side by side.
        let mut tables: BTreeMap<Vec<NetworkId>, LbTable> = BTreeMap::new();
        let mut jobs = Vec::new();
        for (id, nets) in local {
            let Some(netns) = c.sandboxes.netns(&id) else {
                continue;
            };
            if !c.kernel.netns_exists(&netns) {
                debug!(sandbox = id, "no namespace for the load balancer yet");
                continue;
            }
            let desired = tables
                .entry(nets)
                .or_insert_with_key(|nets| c.endpoints.lb_table(nets))
                .clone();
            jobs.push((id, netns, desired));
        }
        self.balancers.apply_many(
            |id| c.kernel.lb_for(id == INGRESS_SANDBOX),
            jobs,
            self.drain,
            c.keep,
        );
    }
}
