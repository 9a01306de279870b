//! A new cluster: what `mesh init` writes as the first raft entry (the cluster object with
//! its CA, join secrets and gossip key; the first manager's node; the routing mesh's
//! `ingress` network) and the credentials of that first manager. The daemon calls
//! [`new_cluster`] and bootstraps raft with the transaction it returns.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::Ipv4Net;
use mesh_common::ids::random_id;
use mesh_common::pki::{JoinToken, NodeKey, new_secret};
use mesh_common::time::now_ms;
use mesh_proto::{
    Cluster, ClusterSpec, GossipKey, InitRequest, Network, NetworkSpec, Node, NodeRole, NodeSpec,
    StoreOp, Transaction, store_op::Op,
};

use crate::allocator::{self, AllocError};
use crate::ca::{RootCa, new_symmetric_key};
use crate::error::{ControlError, Result};

pub const DEFAULT_DATA_PATH_PORT: u32 = 4789;
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";
pub const DEFAULT_ADDR_POOL_MASK: u32 = 24;
/// The routing-mesh subnet of a new cluster when `--ingress-subnet` is not given, unless it
/// overlaps this host's routes or resolvers: then the next free /16 below it (10.254.0.0/16,
/// 10.253.0.0/16, ... down to [`LAST_INGRESS_CANDIDATE`]).
pub const DEFAULT_INGRESS_SUBNET: &str = "10.255.0.0/16";
/// The lowest second octet tried for a default ingress subnet (10.N.0.0/16).
pub const LAST_INGRESS_CANDIDATE: u8 = 128;
/// Name of the routing-mesh network `mesh init` creates.
pub const INGRESS_NETWORK: &str = "ingress";

/// The node `mesh init` runs on.
pub struct FirstNode {
    pub hostname: String,
    pub addr: IpAddr,
    pub control_port: u16,
    pub gossip_port: u16,
    /// The host's IPv4 routes (the default route left out) and DNS resolvers: no network may
    /// take their addresses, or the host would route them into an overlay.
    pub routes: Vec<Ipv4Net>,
    pub resolvers: Vec<Ipv4Addr>,
}

impl FirstNode {
    /// The host's routes and resolvers as reserved ranges, with why.
    fn reserved(&self) -> Vec<(Ipv4Net, String)> {
        let routes = self
            .routes
            .iter()
            .filter(|r| r.prefix_len() > 0)
            .map(|r| (*r, "route".to_string()));
        let resolvers = self
            .resolvers
            .iter()
            .map(|ip| (Ipv4Net::from(*ip), "resolver".to_string()));
        routes.chain(resolvers).collect()
    }
}

/// What [`new_cluster`] made.
pub struct NewCluster {
    pub cluster_id: String,
    pub node_id: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub worker_token: String,
    pub manager_token: String,
    /// The first raft entry.
    pub txn: Transaction,
}

fn invalid(msg: String) -> ControlError {
    ControlError::InvalidArgument(msg)
}

fn internal(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(e.to_string())
}

/// Validates the cluster-wide settings `mesh init` takes. `default_cert_validity_secs`
/// applies when the request gives none.
pub fn cluster_spec(
    req: &InitRequest,
    default_cert_validity_secs: u64,
    control_port: u16,
    gossip_port: u16,
) -> Result<ClusterSpec> {
    let pools = if req.default_addr_pool.is_empty() {
        vec![DEFAULT_ADDR_POOL.to_string()]
    } else {
        req.default_addr_pool.clone()
    };
    let mask = if req.default_addr_pool_mask_length == 0 {
        DEFAULT_ADDR_POOL_MASK
    } else {
        req.default_addr_pool_mask_length
    };
    let mut nets: Vec<Ipv4Net> = Vec::new();
    for p in &pools {
        let net: Ipv4Net = p.parse().map_err(|_| {
            invalid(format!(
                "--default-addr-pool: {p:?} is not an IPv4 CIDR (like 10.0.0.0/8)"
            ))
        })?;
        if net.network() != net.addr() {
            return Err(invalid(format!(
                "--default-addr-pool: {p} has host bits set; did you mean {}?",
                net.trunc()
            )));
        }
        if let Some(other) = nets.iter().find(|o| o.contains(&net) || net.contains(*o)) {
            return Err(invalid(format!(
                "--default-addr-pool: {p} overlaps {other}"
            )));
        }
        if mask < u32::from(net.prefix_len()) {
            return Err(invalid(format!(
                "--default-addr-pool-mask-length: /{mask} is larger than the pool {p}"
            )));
        }
        nets.push(net);
    }
    if !(16..=29).contains(&mask) {
        return Err(invalid(format!(
            "--default-addr-pool-mask-length: {mask} is out of range (16 to 29)"
        )));
    }
    let data_path_port = if req.data_path_port == 0 {
        DEFAULT_DATA_PATH_PORT
    } else {
        req.data_path_port
    };
    if !(1024..=65535).contains(&data_path_port) {
        return Err(invalid(format!(
            "--data-path-port: {data_path_port} is out of range (1024 to 65535)"
        )));
    }
    if data_path_port == u32::from(control_port) || data_path_port == u32::from(gossip_port) {
        return Err(invalid(format!(
            "--data-path-port: {data_path_port} is already the control or gossip port"
        )));
    }
    let cert_validity_secs = if req.cert_validity_secs == 0 {
        default_cert_validity_secs
    } else {
        req.cert_validity_secs
    };
    if cert_validity_secs < 3600 {
        return Err(invalid("--cert-expiry: must be at least 1h".into()));
    }
    Ok(ClusterSpec {
        default_addr_pool: nets.iter().map(ToString::to_string).collect(),
        default_addr_pool_mask_length: mask,
        data_path_port,
        cert_validity_secs,
        reserved_subnets: Vec::new(),
    })
}

/// The routing-mesh network of a new cluster.
fn ingress_network(
    req: &InitRequest,
    cluster: &ClusterSpec,
    node: &FirstNode,
    now: i64,
) -> Result<Network> {
    let mut avoid: Vec<(Ipv4Net, String)> = node
        .reserved()
        .into_iter()
        .map(|(net, why)| (net, format!("a {why} of this host ({net})")))
        .collect();
    if let IpAddr::V4(ip) = node.addr {
        avoid.push((Ipv4Net::from(ip), format!("this node's address ({ip})")));
    }
    let ingress_spec = |subnet: String| NetworkSpec {
        name: INGRESS_NETWORK.into(),
        driver: "overlay".into(),
        subnet,
        ingress: true,
        ..Default::default()
    };
    let (spec, alloc) = if req.ingress_subnet.is_empty() {
        // The default, or the first candidate this host does not already use: a resolver
        // inside the ingress subnet would be routed into the overlay.
        let mut found = None;
        for octet in (LAST_INGRESS_CANDIDATE..=255).rev() {
            let spec = ingress_spec(format!("10.{octet}.0.0/16"));
            match allocator::allocate_network_as("--ingress-subnet", &spec, &[], cluster, &avoid) {
                Ok(alloc) => {
                    found = Some((spec, alloc));
                    break;
                }
                Err(AllocError::Invalid(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        found.ok_or_else(|| {
            invalid(format!(
                "--ingress-subnet: every 10.N.0.0/16 from 10.255 down to 10.{LAST_INGRESS_CANDIDATE} \
                 overlaps this host's routes or resolvers; give one"
            ))
        })?
    } else {
        let spec = ingress_spec(req.ingress_subnet.clone());
        let alloc =
            allocator::allocate_network_as("--ingress-subnet", &spec, &[], cluster, &avoid)?;
        (spec, alloc)
    };
    Ok(Network {
        id: random_id().map_err(internal)?,
        spec: Some(spec),
        subnet: alloc.subnet.to_string(),
        gateway: alloc.gateway.to_string(),
        vni: alloc.vni,
        created_at_ms: now,
        updated_at_ms: now,
        ..Default::default()
    })
}

/// A new cluster whose first manager is `node`.
pub fn new_cluster(
    req: &InitRequest,
    node: FirstNode,
    default_cert_validity_secs: u64,
) -> Result<NewCluster> {
    let mut spec = cluster_spec(
        req,
        default_cert_validity_secs,
        node.control_port,
        node.gossip_port,
    )?;
    spec.reserved_subnets = node
        .reserved()
        .into_iter()
        .map(|(net, why)| format!("{net} {why}"))
        .collect();
    let validity = Duration::from_secs(spec.cert_validity_secs);
    let cluster_id = random_id().map_err(internal)?;
    let node_id = random_id().map_err(internal)?;
    let root = RootCa::generate(&cluster_id)?;
    let key = NodeKey::generate()?;
    let cert_pem = root.sign_csr(
        &key.csr_pem()?,
        &node_id,
        NodeRole::Manager,
        &cluster_id,
        validity,
    )?;
    let now = now_ms();
    let ingress = ingress_network(req, &spec, &node, now)?;
    let cluster = Cluster {
        id: cluster_id.clone(),
        spec: Some(spec),
        ca_cert_pem: root.cert_pem().to_string(),
        ca_key_pem: root.key_pem(),
        worker_secret: new_secret()?,
        manager_secret: new_secret()?,
        gossip_keys: vec![GossipKey {
            id: 1,
            key: new_symmetric_key()?,
            created_at_ms: now,
        }],
        created_at_ms: now,
        last_raft_id: 1,
        ..Default::default()
    };
    let mut first = Node {
        id: node_id.clone(),
        spec: Some(NodeSpec {
            desired_role: NodeRole::Manager as i32,
            ..Default::default()
        }),
        hostname: node.hostname,
        addr: node.addr.to_string(),
        control_port: u32::from(node.control_port),
        gossip_port: u32::from(node.gossip_port),
        raft_id: 1,
        created_at_ms: now,
        updated_at_ms: now,
        ..Default::default()
    };
    first.set_role(NodeRole::Manager);
    let digest = root.digest()?;
    let token = |secret: &str| {
        JoinToken {
            ca_digest: digest.clone(),
            secret: secret.to_string(),
        }
        .to_string()
    };
    let worker_token = token(&cluster.worker_secret);
    let manager_token = token(&cluster.manager_secret);
    let create = |op| StoreOp {
        op: Some(op),
        expect_version: Some(0),
    };
    Ok(NewCluster {
        cluster_id,
        node_id,
        ca_pem: root.cert_pem().to_string(),
        cert_pem,
        key_pem: key.to_pem(),
        worker_token,
        manager_token,
        txn: Transaction {
            ops: vec![
                create(Op::PutCluster(cluster)),
                create(Op::PutNetwork(ingress)),
                create(Op::PutNode(first)),
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_node(routes: &[&str], resolvers: &[&str]) -> FirstNode {
        FirstNode {
            hostname: "h1".into(),
            addr: "192.0.2.2".parse().unwrap(),
            control_port: 2377,
            gossip_port: 7946,
            routes: routes.iter().map(|r| r.parse().unwrap()).collect(),
            resolvers: resolvers.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    fn ingress_subnet(req: &InitRequest, node: FirstNode) -> Result<String> {
        let spec = cluster_spec(req, 86_400, 2377, 7946)?;
        Ok(ingress_network(req, &spec, &node, 0)?.subnet)
    }

    #[test]
    fn default_ingress_subnet_when_the_host_leaves_it_free() {
        let got = ingress_subnet(&InitRequest::default(), first_node(&["172.17.0.0/16"], &[]));
        assert_eq!(got.unwrap(), DEFAULT_INGRESS_SUBNET);
    }

    #[test]
    fn default_ingress_subnet_steps_around_the_hosts_resolver_and_routes() {
        // A resolver inside 10.255/16 and a route over 10.254/16: the next free /16 is used.
        let node = first_node(&["10.254.0.0/16"], &["10.255.255.53"]);
        let got = ingress_subnet(&InitRequest::default(), node);
        assert_eq!(got.unwrap(), "10.253.0.0/16");
    }

    #[test]
    fn explicit_ingress_subnet_over_a_resolver_is_refused() {
        let req = InitRequest {
            ingress_subnet: "10.255.0.0/16".into(),
            ..Default::default()
        };
        let err = ingress_subnet(&req, first_node(&[], &["10.255.255.53"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("--ingress-subnet: 10.255.0.0/16 cannot be an overlay subnet"),
            "{err}"
        );
    }

    #[test]
    fn no_free_default_ingress_subnet_is_an_error() {
        let err = ingress_subnet(&InitRequest::default(), first_node(&["10.0.0.0/8"], &[]));
        let err = err.unwrap_err().to_string();
        assert!(err.contains("--ingress-subnet: every 10.N.0.0/16"), "{err}");
    }
}
