//! What the leader assigned this node, as its session delivered it: the tasks (whatever their
//! desired state: the agent must see a shutdown to act on it), the networks they use, this
//! node's ingress-sandbox address and the cluster's VXLAN port. The first message is the full
//! set; later ones are deltas.

use std::collections::BTreeMap;

use mesh_proto::{
    Assignments, Network, NetworkAttachment, PortConfig, PublishMode, Task, TaskState,
};

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
}

impl Assigned {
    /// Applies one session message's assignments.
    pub fn apply(&mut self, a: Assignments, data_port: u16, ingress: Option<NetworkAttachment>) {
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
