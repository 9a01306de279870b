//! A network create request and a cluster's address pools as text, one field a line:
//! subnet, gateway, ip range, pools (comma-separated), pool mask length, then the subnets of
//! existing networks. The spec is checked as the control API checks it, the pools as
//! `mesh init` does, then addressing is allocated: what comes out never overlaps what is in
//! use, and its gateway is a host of its subnet.
#![no_main]

use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use mesh_control::allocator::network::{allocate_network, unusable_subnets};
use mesh_control::bootstrap::cluster_spec;
use mesh_control::controlapi::validate_network_spec;
use mesh_proto::{InitRequest, Network, NetworkSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let mut field = || lines.next().unwrap_or("").to_string();
    let spec = NetworkSpec {
        name: "net".into(),
        subnet: field(),
        gateway: field(),
        ip_range: field(),
        ..Default::default()
    };
    let pools = field();
    let init = InitRequest {
        default_addr_pool: pools
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        default_addr_pool_mask_length: field().parse().unwrap_or(0),
        ..Default::default()
    };
    let existing: Vec<Network> = lines
        .take(64)
        .enumerate()
        .map(|(i, subnet)| Network {
            id: format!("n{i}"),
            subnet: subnet.to_string(),
            vni: 4096 + i as u32,
            ..Default::default()
        })
        .collect();
    if validate_network_spec(&spec, 64 * 1024).is_err() {
        return;
    }
    let Ok(cluster) = cluster_spec(&init, 3600, 2377, 7946) else {
        return;
    };
    let existing: Vec<&Network> = existing.iter().collect();
    let Ok(alloc) = allocate_network(&spec, &existing, &cluster, &[]) else {
        return;
    };
    let subnet = alloc.subnet;
    let overlaps =
        |other: &Ipv4Net| other.contains(&subnet.network()) || subnet.contains(&other.network());
    for n in &existing {
        if let Ok(other) = n.subnet.parse::<Ipv4Net>() {
            assert!(!overlaps(&other), "{subnet} overlaps network {other}");
        }
    }
    for (other, what) in unusable_subnets() {
        assert!(!overlaps(&other), "{subnet} overlaps {what}");
    }
    assert!(
        subnet.contains(&alloc.gateway),
        "gateway {} outside {subnet}",
        alloc.gateway
    );
    assert_ne!(alloc.gateway, subnet.network());
    assert_ne!(alloc.gateway, subnet.broadcast());
});
