//! What the leader assigned this node, as its session delivered it: the tasks (whatever their
//! desired state: the agent must see a shutdown to act on it), the networks they use, this
//! node's ingress-sandbox address and the cluster's VXLAN port. The first message is the full
//! set; later ones are deltas.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use mesh_dataplane::overlay::Mac;
use mesh_proto::{
    Network, NetworkAttachment, Peer, PortConfig, PublishMode, RoutedPort, Task, TaskState,
};

use super::Session;
use crate::dns::SharedTable;

/// The assignments as the session delivered them.
#[derive(Default)]
pub struct Assigned {
    pub tasks: BTreeMap<String, Task>,
    pub networks: BTreeMap<String, Network>,
    /// Whether the full set has arrived: nothing is changed on the node before it has.
    pub have_full: bool,
    /// This node's address on the ingress network, for its ingress sandbox.
    pub ingress: Option<NetworkAttachment>,
    /// The VXLAN UDP port (0: not known yet).
    pub data_port: u16,
    /// Every node of the cluster, from the store.
    pub peers: Vec<Peer>,
    /// Every port published through the routing mesh, from the store.
    pub routed: Vec<RoutedPort>,
    /// The name and aliases of every service of the cluster, from the store.
    pub service_names: Vec<String>,
}

impl Assigned {
    /// Applies what one session message said.
    pub fn apply(&mut self, session: Session) {
        let Session {
            assignments: a,
            data_port,
            ingress,
            peers,
            routed,
            service_names,
        } = session;
        self.peers = peers;
        self.routed = routed;
        self.service_names = service_names;
        if a.full {
            self.tasks.clear();
            self.networks.clear();
            self.have_full = true;
        }
        for id in &a.removed_tasks {
            self.tasks.remove(id);
        }
        for id in &a.removed_networks {
            self.networks.remove(id);
        }
        for t in a.tasks {
            self.tasks.insert(t.id.clone(), t);
        }
        for n in a.networks {
            self.networks.insert(n.id.clone(), n);
        }
        if data_port != 0 {
            self.data_port = data_port;
        }
        self.ingress = ingress;
    }

    /// The tasks to run on node `node_id`.
    pub fn wanted(&self, node_id: &str) -> Vec<Task> {
        self.running_here(node_id).cloned().collect()
    }

    /// Tasks desired running on node `node_id`.
    pub fn running_here<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.desired_state() == TaskState::Running && t.node_id == node_id)
    }

    /// The ingress sandboxes of the cluster's nodes, on the ingress network `network_id`:
    /// (address, MAC, the node's underlay address), from the store, so a node whose agent is
    /// down keeps its place in every task's reply routing and every overlay.
    pub fn ingress_sandboxes(&self, network_id: &str) -> Vec<(Ipv4Net, Mac, Ipv4Addr, &str)> {
        self.peers
            .iter()
            .filter_map(|p| {
                let a = p.ingress.as_ref().filter(|a| a.network_id == network_id)?;
                Some((
                    a.addr.parse().ok()?,
                    a.mac.parse().ok()?,
                    p.addr.parse().ok()?,
                    p.node_id.as_str(),
                ))
            })
            .collect()
    }

    /// Tells DNS which names are the cluster's: every service name and alias, and the node
    /// ids that name the tasks of global services.
    pub fn sync_cluster_names(&self, table: &SharedTable) {
        let services = self.service_names.iter().map(String::as_str);
        let nodes = self.peers.iter().map(|p| p.node_id.as_str());
        table.update(|t| t.set_cluster(services, nodes));
    }

    pub fn is_ingress(&self, network_id: &str) -> bool {
        self.networks
            .get(network_id)
            .and_then(|n| n.spec.as_ref())
            .is_some_and(|s| s.ingress)
    }
}

/// The host-mode ports a task publishes.
pub fn host_ports(t: &Task) -> impl Iterator<Item = &PortConfig> {
    t.ports
        .iter()
        .filter(|p| p.publish_mode() == PublishMode::Host)
}
