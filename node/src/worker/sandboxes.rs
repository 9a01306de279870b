//! The overlay this node should have: one network sandbox per overlay network its tasks use,
//! one task sandbox per task (and the ingress sandbox), the gateway-bridge addresses handed to
//! sandboxes, and the remote endpoints programmed from the endpoint table. Kept as the
//! dataplane's intent model ([`NodeDataplane`]), which the dataplane plans against.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_dataplane::Kernel;
use mesh_dataplane::link::{IfName, Ipv4Cidr};
use mesh_dataplane::overlay::{
    self, GatewayAllocator, LocalEndpoint, Mac, NetworkSpec, NodeDataplane, Observed, Prefix,
    RemoteEndpoint, TaskId, TaskSandbox, Vni,
};
use mesh_proto::{Network, Task};
use tracing::warn;

use super::assigned::Assigned;

/// The sandbox id of the node's ingress sandbox (the routing mesh's entry point: a task
/// sandbox with no process).
pub const INGRESS_SANDBOX: &str = "ingress_sbox";

/// The overlay's intent and what the worker hands out for it.
pub struct Sandboxes {
    pub desired: NodeDataplane,
    gw: GatewayAllocator,
    /// Overlay MTU per VNI, derived once.
    mtus: BTreeMap<u32, u32>,
    /// Other nodes' ingress sandboxes programmed as remote endpoints, by address.
    peer_sandboxes: BTreeMap<Ipv4Addr, RemoteEndpoint>,
    /// Remote endpoints found in the kernel at start and kept until the endpoint table has
    /// settled (see [`Sandboxes::adopt_remotes`]).
    adopted_remotes: BTreeSet<(Vni, Ipv4Addr)>,
}

impl Sandboxes {
    pub fn new(prefix: Prefix, underlay_ip: Ipv4Addr) -> Sandboxes {
        let desired = NodeDataplane::new(prefix, underlay_ip);
        let gw = GatewayAllocator::new(&desired.gateway);
        Sandboxes {
            desired,
            gw,
            mtus: BTreeMap::new(),
            peer_sandboxes: BTreeMap::new(),
            adopted_remotes: BTreeSet::new(),
        }
    }

    /// After an agent restart: the remote endpoints the kernel holds (a permanent neighbor
    /// entry and the FDB entry of its MAC, per network sandbox) stay wanted until the
    /// endpoint table is complete, so a restarted agent does not cut its tasks and its
    /// routing mesh off the other nodes while gossip catches up.
    pub fn adopt_remotes(&mut self, observed: &Observed) {
        for (vni, snap) in &observed.networks {
            let vteps: BTreeMap<Mac, Ipv4Addr> = snap
                .fdb
                .values()
                .flatten()
                .map(|e| (e.mac, e.vtep))
                .collect();
            for (ip, mac) in snap.neighbors.values().flatten() {
                if let Some(vtep) = vteps.get(mac) {
                    let remote = RemoteEndpoint {
                        vni: *vni,
                        ip: *ip,
                        mac: *mac,
                        vtep: *vtep,
                    };
                    self.desired.remotes.insert((*vni, *ip), remote);
                    self.adopted_remotes.insert((*vni, *ip));
                }
            }
        }
    }

    /// Once the endpoint table has settled: adopted remote endpoints that neither it
    /// (`wanted`) nor the store's list of ingress sandboxes names any more go.
    pub fn settle_remotes(&mut self, kernel: &dyn Kernel, wanted: impl Fn(Vni, Ipv4Addr) -> bool) {
        for (vni, ip) in std::mem::take(&mut self.adopted_remotes) {
            if !wanted(vni, ip) && !self.peer_sandboxes.contains_key(&ip) {
                self.remove_remote(kernel, vni, ip);
            }
        }
    }

    /// After an agent restart: keep the gateway addresses the kernel shows for `adopted`.
    pub fn adopt(&mut self, observed: &Observed, adopted: &[TaskId]) {
        self.gw.adopt(observed, adopted.iter());
    }

    /// The namespace of sandbox `id` (a task id, or [`INGRESS_SANDBOX`]).
    pub fn netns(&self, id: &str) -> Option<String> {
        TaskId::new(id.to_string())
            .ok()
            .map(|id| self.desired.prefix.task_netns(&id))
    }

    /// The gateway-bridge address of sandbox `id`, if it has one.
    pub fn egress(&self, id: &str) -> Option<Ipv4Cidr> {
        let id = TaskId::new(id.to_string()).ok()?;
        self.desired.tasks.get(&id).and_then(|s| s.egress)
    }

    /// Whether this node has a network sandbox for `vni`.
    pub fn has_network(&self, vni: Vni) -> bool {
        self.desired.networks.contains_key(&vni)
    }

    fn mtu(&mut self, kernel: &dyn Kernel, n: &Network) -> u32 {
        if let Some(m) = self.mtus.get(&n.vni) {
            return *m;
        }
        let wanted = n.spec.as_ref().map(|s| s.mtu).filter(|m| *m != 0);
        let mtu = kernel
            .overlay_mtu(self.desired.underlay_ip, wanted)
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the underlay MTU; using 1450");
                1450
            });
        self.mtus.insert(n.vni, mtu);
        mtu
    }

    /// The endpoint of one attachment (`eth{index}`) and its network as the overlay needs
    /// it, or `None` if the network is unknown or unusable.
    fn endpoint(
        &mut self,
        kernel: &dyn Kernel,
        assigned: &Assigned,
        index: usize,
        addr: &str,
        network_id: &str,
    ) -> Option<(NetworkSpec, LocalEndpoint)> {
        let n = assigned.networks.get(network_id)?;
        let prefix = n.subnet.split('/').nth(1).unwrap_or("24");
        let gateway = format!("{}/{prefix}", n.gateway);
        let (Ok(vni), Ok(addr), Ok(gw)) = (
            Vni::new(n.vni),
            addr.parse::<Ipv4Cidr>(),
            gateway.parse::<Ipv4Cidr>(),
        ) else {
            warn!(network = %n.id, %addr, "unusable network attachment");
            return None;
        };
        let internal = n.spec.as_ref().is_some_and(|s| s.internal);
        let mtu = self.mtu(kernel, n);
        let ifname = IfName::new(format!("eth{index}")).ok()?;
        Some((
            NetworkSpec {
                vni,
                gateway: gw,
                mtu,
                internal,
            },
            LocalEndpoint::new(vni, ifname, addr),
        ))
    }

    /// A sandbox with these endpoints, on the gateway bridge unless all its networks are
    /// internal.
    fn sandbox(
        &mut self,
        id: TaskId,
        parts: Vec<(NetworkSpec, LocalEndpoint)>,
        networks: &mut BTreeMap<Vni, NetworkSpec>,
    ) -> TaskSandbox {
        // A task on no network still gets the gateway bridge: egress, and host-mode ports.
        let needs_egress = parts.is_empty() || parts.iter().any(|(n, _)| !n.internal);
        let mut endpoints = Vec::new();
        for (spec, endpoint) in parts {
            networks.insert(spec.vni, spec);
            endpoints.push(endpoint);
        }
        let egress = if needs_egress {
            self.gw
                .allocate(&id)
                .map_err(
                    |e| warn!(task = %id.as_str(), error = %e, "no gateway address for the task"),
                )
                .ok()
        } else {
            self.gw.release(&id);
            None
        };
        TaskSandbox {
            id,
            endpoints,
            egress,
        }
    }

    /// Makes the intent hold the sandboxes of `wanted` (and the ingress sandbox when this node
    /// has an ingress address), plus those of `draining` tasks it holds already, and nothing
    /// else: addresses of sandboxes that go are released, remote endpoints of networks that go
    /// are dropped.
    ///
    /// A draining task keeps its sandbox until its process is stopped: a load balancer that
    /// has not yet heard of the withdrawal still sends it new connections, and those must
    /// reach the live task rather than a namespace without links. A draining sandbox whose
    /// address a wanted one now holds goes at once.
    pub fn plan(
        &mut self,
        kernel: &dyn Kernel,
        assigned: &Assigned,
        wanted: &[Task],
        draining: &BTreeSet<TaskId>,
    ) {
        if assigned.data_port != 0 {
            self.desired.data_port = assigned.data_port;
        }
        let mut networks = BTreeMap::new();
        let mut sandboxes = BTreeMap::new();
        for t in wanted {
            let Ok(id) = TaskId::new(t.id.clone()) else {
                continue;
            };
            let parts = t
                .networks
                .iter()
                .enumerate()
                .filter_map(|(i, a)| self.endpoint(kernel, assigned, i, &a.addr, &a.network_id))
                .collect();
            let sandbox = self.sandbox(id.clone(), parts, &mut networks);
            sandboxes.insert(id, sandbox);
        }
        if let Some(a) = &assigned.ingress
            && let Some(part) = self.endpoint(kernel, assigned, 0, &a.addr, &a.network_id)
        {
            let id = TaskId::new(INGRESS_SANDBOX).expect("valid task id");
            let sandbox = self.sandbox(id.clone(), vec![part], &mut networks);
            sandboxes.insert(id, sandbox);
        }
        let held: BTreeSet<(Vni, Ipv4Addr)> = sandboxes
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| (e.vni, e.addr.addr())))
            .collect();
        for id in draining {
            if sandboxes.contains_key(id) {
                continue;
            }
            let Some(old) = self.desired.tasks.get(id) else {
                continue;
            };
            let specs: Option<Vec<NetworkSpec>> = old
                .endpoints
                .iter()
                .map(|e| self.desired.networks.get(&e.vni).cloned())
                .collect();
            let clash = old
                .endpoints
                .iter()
                .any(|e| held.contains(&(e.vni, e.addr.addr())));
            if let (Some(specs), false) = (specs, clash) {
                for spec in specs {
                    networks.entry(spec.vni).or_insert(spec);
                }
                sandboxes.insert(id.clone(), old.clone());
            }
        }
        for id in self.desired.tasks.keys() {
            if !sandboxes.contains_key(id) {
                self.gw.release(id);
            }
        }
        self.desired.networks = networks;
        self.desired.tasks = sandboxes;
        let live = &self.desired.networks;
        self.desired
            .remotes
            .retain(|(vni, _), _| live.contains_key(vni));
    }

    /// Programs a remote endpoint (replacing the one that had its network and address).
    pub fn ensure_remote(&mut self, kernel: &dyn Kernel, remote: RemoteEndpoint) {
        if let Err(e) = overlay::ensure_remote(kernel.overlay(), &mut self.desired, remote) {
            warn!(ip = %remote.ip, error = %e, "cannot program remote endpoint");
        }
    }

    /// Removes the remote endpoint at (`vni`, `ip`); absent is success.
    pub fn remove_remote(&mut self, kernel: &dyn Kernel, vni: Vni, ip: Ipv4Addr) {
        if let Err(e) = overlay::remove_remote(kernel.overlay(), &mut self.desired, vni, ip) {
            warn!(%ip, error = %e, "cannot remove remote endpoint");
        }
    }

    /// Programs the other nodes' ingress sandboxes (address, MAC, their node's underlay
    /// address) as remote endpoints of the ingress overlay `vni`, from the store's node list
    /// rather than gossip: a routed connection's reply goes back through the sandbox it came
    /// from even while that node's agent is down. Those of nodes that left go.
    pub fn sync_peer_sandboxes<'a>(
        &mut self,
        kernel: &dyn Kernel,
        vni: Vni,
        peers: impl Iterator<Item = (ipnet::Ipv4Net, Mac, Ipv4Addr, &'a str)>,
    ) {
        let wanted: BTreeMap<Ipv4Addr, RemoteEndpoint> = peers
            .map(|(addr, mac, vtep, _)| {
                let ip = addr.addr();
                (ip, RemoteEndpoint { vni, ip, mac, vtep })
            })
            .collect();
        for (ip, _) in std::mem::take(&mut self.peer_sandboxes) {
            if !wanted.contains_key(&ip) {
                self.remove_remote(kernel, vni, ip);
            }
        }
        for (ip, remote) in wanted {
            self.ensure_remote(kernel, remote);
            self.peer_sandboxes.insert(ip, remote);
        }
    }

    /// Brings the kernel's overlay to the intent.
    pub fn reconcile(&self, kernel: &dyn Kernel) -> mesh_dataplane::Result<()> {
        overlay::reconcile(kernel.overlay(), &self.desired).map(|_| ())
    }

    /// Leaving the cluster: nothing is wanted any more.
    pub fn clear(&mut self) {
        self.desired.tasks.clear();
        self.desired.networks.clear();
        self.desired.remotes.clear();
    }
}
