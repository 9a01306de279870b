//! The load balancers' conformance suite on Linux: [`NftLb`] in a fresh namespace
//! (`md<pid>x<n>-lbc`, removed on drop, also on panic), flows put into and counted in its
//! connection tracking with the `conntrack` tool. Needs root, `nft` and `conntrack`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

use mesh_dataplane::lb::NftLb;
use mesh_dataplane::lb::conformance::Harness;
use mesh_dataplane::netns::{Netns, TempNetns};

/// `conntrack ARGS` inside `ns`: its standard output.
fn conntrack(ns: &Netns, args: &[&str]) -> String {
    let mut cmd = Command::new("conntrack");
    cmd.args(args);
    ns.enter_on_exec(&mut cmd).expect("enter namespace");
    let out = cmd.output().expect("run conntrack");
    assert!(out.status.success(), "conntrack {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_harness() -> Harness<NftLb> {
    static SPORT: AtomicU16 = AtomicU16::new(20000);
    let ns = TempNetns::new("lbc").expect("namespace");
    let name = ns.name().to_owned();
    let (add_ns, count_ns) = (
        ns.try_clone().expect("handle"),
        ns.try_clone().expect("handle"),
    );
    Harness {
        lb: NftLb::new(),
        netns: name.clone(),
        missing: format!("{name}-missing"),
        add_flow: Box::new(move |backend: Ipv4Addr| {
            let sport = SPORT.fetch_add(1, Ordering::Relaxed).to_string();
            let backend = backend.to_string();
            conntrack(
                &add_ns,
                &[
                    "-I",
                    "-p",
                    "udp",
                    "-s",
                    "10.96.2.1",
                    "-d",
                    "10.96.0.5",
                    "--sport",
                    &sport,
                    "--dport",
                    "53",
                    "-r",
                    &backend,
                    "-q",
                    "10.96.2.1",
                    "--reply-port-src",
                    "53",
                    "--reply-port-dst",
                    &sport,
                    "-t",
                    "120",
                ],
            );
        }),
        flows_to: Box::new(move |backend: Ipv4Addr| {
            let listing = conntrack(
                &count_ns,
                &["-L", "-f", "ipv4", "--reply-src", &backend.to_string()],
            );
            listing.lines().filter(|l| l.starts_with("udp")).count()
        }),
        guard: Box::new(ns),
    }
}

mesh_dataplane::lb_conformance_tests!(nft_harness);
