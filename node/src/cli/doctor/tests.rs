//! The rules of `mesh doctor`'s checks, on made-up readings.

use std::path::Path;

use serde_json::json;

use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn routes(list: &[(&str, &str)]) -> Vec<(String, Ipv4Net)> {
    list.iter()
        .map(|(dev, n)| (dev.to_string(), net(n)))
        .collect()
}

#[test]
fn module_states_give_each_feature_its_verdict() {
    use Module::*;
    let status = |c: Check| c.status;
    assert_eq!(status(check_vxlan(&Loaded)), Status::Ok);
    assert_eq!(status(check_vxlan(&Available)), Status::Ok);
    assert_eq!(status(check_vxlan(&Missing)), Status::Problem);
    assert_eq!(status(check_vxlan(&Unknown)), Status::Warn);
    assert_eq!(status(check_ipvs(true, &Unknown)), Status::Ok);
    assert_eq!(status(check_ipvs(false, &Available)), Status::Ok);
    let ipvs = check_ipvs(false, &Missing);
    assert_eq!(ipvs.status, Status::Warn);
    assert!(
        ipvs.detail.contains("nftables load balancer will be used"),
        "{ipvs:?}"
    );
    let wg = check_wireguard(&Unknown);
    assert_eq!(wg.status, Status::Warn);
    assert!(wg.detail.contains("userspace tunnels"), "{wg:?}");
    assert_eq!(status(check_wireguard(&Builtin)), Status::Ok);
    assert_eq!(status(check_tun(false)), Status::Warn);
    assert_eq!(status(check_conntrack(false, true)), Status::Problem);
    assert_eq!(status(check_conntrack(true, false)), Status::Warn);
    assert_eq!(status(check_conntrack(true, true)), Status::Ok);
    assert_eq!(
        status(check_nftables(&Nft::NotInstalled, true)),
        Status::Problem
    );
    assert_eq!(
        status(check_nftables(
            &Nft::Fails("Operation not permitted".into()),
            false
        )),
        Status::Warn,
        "not root: the check cannot tell"
    );
    assert_eq!(
        status(check_nftables(
            &Nft::Fails("Protocol not supported".into()),
            true
        )),
        Status::Problem
    );
}

#[test]
fn module_lists_are_read_by_module_name() {
    let dep = "kernel/drivers/net/vxlan/vxlan.ko.zst: kernel/net/ipv4/udp_tunnel.ko.zst\n\
               kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko\n\
               kernel/drivers/net/wireguard/wireguard.ko.xz:\n";
    assert!(module_listed(dep, "vxlan"));
    assert!(module_listed(dep, "ip_vs"));
    assert!(module_listed(dep, "wireguard"));
    assert!(
        !module_listed(dep, "udp"),
        "a dependency's prefix is not a module"
    );
    assert!(!module_listed(dep, "ip"));
    assert!(module_listed("kernel/drivers/net/tun.ko\n", "tun"));
    assert!(!module_listed("kernel/drivers/net/tun.ko\n", "vxlan"));
    assert!(!module_listed("", "vxlan"));
}

#[test]
fn ports_are_free_ours_or_someone_elses() {
    let [control, _, gossip_udp, data] = PORTS;
    // (port, bind result, daemon running, status, words in the detail)
    let cases = [
        (control, Bind::Free, false, Status::Ok, "free"),
        (control, Bind::Free, true, Status::Ok, "free"),
        (control, Bind::InUse, true, Status::Ok, "mesh daemon"),
        (
            control,
            Bind::InUse,
            false,
            Status::Problem,
            "another program",
        ),
        (
            gossip_udp,
            Bind::InUse,
            false,
            Status::Problem,
            "another program",
        ),
        (
            data,
            Bind::Failed("permission denied".into()),
            false,
            Status::Warn,
            "permission denied",
        ),
    ];
    for (port, bind, running, status, words) in cases {
        let c = check_port(port, &bind, running);
        assert_eq!(c.status, status, "{c:?}");
        assert!(c.detail.contains(words), "{c:?}");
    }
    assert_eq!(
        check_port(control, &Bind::Free, false).name,
        "port 2377/tcp"
    );
    assert_eq!(
        check_port(gossip_udp, &Bind::Free, false).name,
        "port 7946/udp"
    );
    let busy = check_port(data, &Bind::InUse, false);
    assert!(busy.fix.unwrap().contains("--data-path-port"));
    let busy = check_port(gossip_udp, &Bind::InUse, false);
    assert!(busy.fix.unwrap().contains("ss -lunp 'sport = :7946'"));
}

#[test]
fn ip_forward_and_rp_filter() {
    assert_eq!(check_ip_forward(Some("1\n")).status, Status::Ok);
    let off = check_ip_forward(Some("0"));
    assert_eq!(off.status, Status::Warn);
    assert!(off.detail.contains("mesh sets it to 1"), "{off:?}");
    assert_eq!(check_ip_forward(None).status, Status::Warn);

    // (all, default, status, words)
    let cases = [
        (Some(0), Some(0), Status::Ok, "all = 0, default = 0"),
        (Some(2), Some(2), Status::Ok, "not strict"),
        (Some(0), Some(2), Status::Ok, "default = 2"),
        (Some(1), Some(0), Status::Warn, "strict (1) on all:"),
        (Some(0), Some(1), Status::Warn, "strict (1) on default:"),
        (Some(1), Some(1), Status::Warn, "on all and default"),
        (None, Some(0), Status::Warn, "cannot read"),
    ];
    for (all, default, status, words) in cases {
        let c = check_rp_filter(all, default);
        assert_eq!(c.status, status, "{all:?} {default:?}: {c:?}");
        assert!(c.detail.contains(words), "{c:?}");
    }
}

/// Docker's table as `nft -j list ruleset` shows it (abridged), with `extra` rules in its
/// `DOCKER-USER` chain.
fn docker_ruleset(extra: Vec<Value>) -> Value {
    let mut items = vec![
        json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
        json!({"table": {"family": "ip", "name": "filter", "handle": 2}}),
        json!({"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 5}}),
        json!({"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 4,
            "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}),
        json!({"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 2,
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}),
        json!({"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 9,
            "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "DOCKER-USER"}}]}}),
        json!({"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 10,
            "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "docker0"}},
                     {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                     {"accept": null}]}}),
    ];
    for expr in extra {
        items.push(
            json!({"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER",
            "handle": 20, "expr": expr}}),
        );
    }
    json!({ "nftables": items })
}

fn accept(key: &str, right: Value) -> Value {
    json!([{"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}}, {"accept": null}])
}

#[test]
fn a_forward_chain_that_drops_is_found_with_what_it_accepts() {
    let chains = |doc: Value| forward_drop_chains(&doc);
    let found = chains(docker_ruleset(vec![]));
    assert_eq!(
        found,
        [DropChain {
            family: "ip".into(),
            table: "filter".into(),
            chain: "FORWARD".into(),
            accepts: Accepts::No,
            docker_user: true,
        }]
    );
    // both ways, through the chain FORWARD jumps to; by name, wildcard or set
    for (inbound, outbound) in [
        (json!("mesh_gwbridge"), json!("mesh_gwbridge")),
        (json!("mesh*"), json!("mesh_*")),
        (
            json!({"set": ["docker0", "mesh_gwbridge"]}),
            json!("mesh_gwbridge"),
        ),
    ] {
        let found = chains(docker_ruleset(vec![
            accept("iifname", inbound.clone()),
            accept("oifname", outbound.clone()),
        ]));
        assert_eq!(found[0].accepts, Accepts::Both, "{inbound} {outbound}");
    }
    // one way only, another bridge, or a match without accept: not enough
    for extra in [
        vec![accept("iifname", json!("mesh_gwbridge"))],
        vec![
            accept("iifname", json!("br0")),
            accept("oifname", json!("br0")),
        ],
        vec![
            accept("iifname", json!("meshx*")),
            accept("oifname", json!("other*")),
        ],
        vec![
            json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "mesh_gwbridge"}}, {"drop": null}]),
            json!([{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "mesh_gwbridge"}}, {"accept": null}]),
        ],
    ] {
        assert_eq!(
            chains(docker_ruleset(extra.clone()))[0].accepts,
            Accepts::No,
            "{extra:?}"
        );
    }
    // an accept with no condition lets everything through
    let all = docker_ruleset(vec![json!([{"counter": null}, {"accept": null}])]);
    assert_eq!(chains(all)[0].accepts, Accepts::Both);
    // iptables extensions nft cannot show: cannot tell, unless tied to another interface
    let opaque = docker_ruleset(vec![
        json!([{"xt": {"type": "match", "name": "physdev"}}, {"accept": null}]),
    ]);
    assert_eq!(chains(opaque)[0].accepts, Accepts::Unknown);
    let docker0 = docker_ruleset(vec![json!([
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "docker0"}},
        {"xt": {"type": "match", "name": "conntrack"}}, {"accept": null}])]);
    assert_eq!(chains(docker0)[0].accepts, Accepts::No);
    let dropped = docker_ruleset(vec![
        json!([{"xt": {"type": "match", "name": "conntrack"}}, {"drop": null}]),
    ]);
    assert_eq!(chains(dropped)[0].accepts, Accepts::No);
    // a chain of another table with the same name is not followed
    let mut doc = docker_ruleset(vec![]);
    doc["nftables"]
        .as_array_mut()
        .unwrap()
        .push(json!({"rule": {"family": "inet", "table": "other",
        "chain": "DOCKER-USER", "expr": accept("iifname", json!("*"))}}));
    assert_eq!(chains(doc)[0].accepts, Accepts::No);
    // accept policies, other hooks, and garbage: nothing found
    assert!(
        chains(
            json!({"nftables": [{"chain": {"family": "inet", "table": "fw", "name": "fwd",
        "hook": "forward", "policy": "accept"}}]})
        )
        .is_empty()
    );
    assert!(
        chains(json!({"nftables": [{"chain": {"hook": "input", "policy": "drop"}}]})).is_empty()
    );
    assert!(chains(json!([1, 2])).is_empty());
    assert!(chains(json!({"nftables": "x"})).is_empty());
}

#[test]
fn a_loop_of_jumps_ends() {
    let doc = json!({"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "fwd", "hook": "forward", "policy": "drop"}},
        {"rule": {"family": "inet", "table": "t", "chain": "fwd", "expr": [{"jump": {"target": "a"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "a", "expr": [{"goto": {"target": "fwd"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "a", "expr": accept("iifname", json!("mesh_gwbridge"))}},
        {"rule": {"family": "inet", "table": "t", "chain": "a", "expr": accept("oifname", json!("mesh_gwbridge"))}},
    ]});
    assert_eq!(forward_drop_chains(&doc)[0].accepts, Accepts::Both);
}

#[test]
fn forward_policy_checks_name_the_chain_and_the_fix() {
    let chain = |family: &str, table: &str, accepts| DropChain {
        family: family.into(),
        table: table.into(),
        chain: "FORWARD".into(),
        accepts,
        docker_user: table == "filter",
    };
    let mut plain_iptables = chain("ip", "filter", Accepts::No);
    plain_iptables.docker_user = false;
    let checks = check_forward_policy(Ok(&[
        chain("ip", "filter", Accepts::No),
        chain("inet", "fw", Accepts::Unknown),
        chain("inet", "fw2", Accepts::Both),
        plain_iptables,
    ]));
    assert_eq!(checks.len(), 4);
    assert!(
        checks[3]
            .fix
            .as_deref()
            .unwrap()
            .contains("iptables -I FORWARD -i mesh_gwbridge -j ACCEPT")
    );
    assert!(
        checks.iter().all(|c| c.name == "forward policy"),
        "{checks:?}"
    );
    assert!(
        checks[0]
            .detail
            .starts_with("ip filter FORWARD: policy drop, and no rule accepts"),
        "{:?}",
        checks[0]
    );
    assert!(
        checks[1].detail.starts_with("inet fw FORWARD: "),
        "{:?}",
        checks[1]
    );
    assert_eq!(checks[0].status, Status::Warn);
    let fix = checks[0].fix.as_deref().unwrap();
    assert!(
        fix.starts_with("accept traffic of mesh bridges: iptables -I DOCKER-USER -i mesh_gwbridge"),
        "{fix}"
    );
    assert_eq!(checks[1].status, Status::Warn);
    assert!(
        checks[1]
            .fix
            .as_deref()
            .unwrap()
            .contains("nft insert rule inet fw FORWARD iifname mesh_gwbridge accept")
    );
    assert_eq!(checks[2].status, Status::Ok);
    assert_eq!(check_forward_policy(Ok(&[]))[0].status, Status::Ok);
    assert_eq!(
        check_forward_policy(Err("no `nft` command"))[0].status,
        Status::Warn
    );
}

#[test]
fn mtu_leaves_room_for_vxlan() {
    let ok = check_mtu(Some(("eth0", 1500)));
    assert_eq!(
        (ok.status, ok.detail.as_str()),
        (Status::Ok, "eth0 has MTU 1500: overlays get 1450")
    );
    assert_eq!(check_mtu(Some(("eth0", 1330))).status, Status::Ok);
    let small = check_mtu(Some(("wg0", 1329)));
    assert_eq!(small.status, Status::Warn);
    assert!(small.detail.contains("overlays get 1279"), "{small:?}");
    assert_eq!(
        check_mtu(Some(("x", 10))).status,
        Status::Warn,
        "no underflow"
    );
    assert_eq!(check_mtu(None).status, Status::Warn);
}

#[test]
fn routes_and_resolvers_inside_mesh_ranges_are_found() {
    let ranges = mesh_ranges();
    assert_eq!(ranges[0].0, net("10.0.0.0/8"));
    assert_eq!(ranges[1].0, net("172.30.0.0/16"));
    let plain = routes(&[
        ("eth0", "0.0.0.0/0"),
        ("eth0", "192.0.2.0/24"),
        ("docker0", "172.17.0.0/16"),
        // mesh's own
        ("mesh_gwbridge", "172.30.0.0/16"),
        ("mesh_gwbridge", "10.255.0.0/16"),
    ]);
    let c = check_subnets(&ranges, &plain, &["192.0.2.53".parse().unwrap()]);
    assert_eq!(c.status, Status::Ok, "{c:?}");

    let c = check_subnets(
        &ranges,
        &routes(&[("eth1", "10.1.0.0/16"), ("eth0", "0.0.0.0/0")]),
        &["10.255.255.53".parse().unwrap()],
    );
    assert_eq!(c.status, Status::Warn);
    assert!(
        c.detail.starts_with(
            "route 10.1.0.0/16 (eth1) in the default address pool 10.0.0.0/8, nameserver 10.255.255.53 in the default address pool 10.0.0.0/8:"
        ),
        "{c:?}"
    );
    // a route that holds the whole pool overlaps it too
    let c = check_subnets(&ranges, &routes(&[("vpn0", "8.0.0.0/6")]), &[]);
    assert_eq!(c.status, Status::Warn, "{c:?}");

    // the gateway bridge's subnet cannot be moved: a problem
    let c = check_subnets(&ranges, &routes(&[("br-lan", "172.30.5.0/24")]), &[]);
    assert_eq!(c.status, Status::Problem, "{c:?}");
    assert!(
        c.detail
            .contains("route 172.30.5.0/24 (br-lan) in the gateway bridge subnet")
    );

    // many hits are summed up
    let many: Vec<Ipv4Addr> = (1..=5).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
    let c = check_subnets(&ranges, &[], &many);
    assert!(c.detail.contains("and 2 more"), "{c:?}");
}

#[test]
fn certificate_expiry() {
    let path = Path::new("/var/lib/mesh/certs/node.pem");
    let day = 86_400;
    let now = 1_800_000_000;
    let c = check_certificate(&Cert::NotAfter(now + 90 * day), path, now);
    assert_eq!(c.status, Status::Ok);
    assert!(c.detail.ends_with("(90 days)"), "{c:?}");
    let c = check_certificate(&Cert::NotAfter(now + 29 * day), path, now);
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.starts_with("expires in 29 days (2027-"), "{c:?}");
    let c = check_certificate(&Cert::NotAfter(now), path, now);
    assert_eq!(c.status, Status::Problem);
    assert!(
        c.detail.contains("expired on 2027-01-15T08:00:00Z"),
        "{c:?}"
    );
    assert_eq!(
        check_certificate(&Cert::Absent, path, now).status,
        Status::Ok
    );
    let c = check_certificate(&Cert::Unreadable("permission denied".into()), path, now);
    assert_eq!(c.status, Status::Problem);
    assert!(
        c.detail.starts_with("/var/lib/mesh/certs/node.pem:"),
        "{c:?}"
    );
}

#[test]
fn a_real_certificate_is_read_from_its_pem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.pem");
    assert_eq!(certificate(&path), Cert::Absent);
    std::fs::write(&path, "not a pem").unwrap();
    assert!(matches!(certificate(&path), Cert::Unreadable(_)));
    let ca = mesh_control::ca::RootCa::generate("cluster1").unwrap();
    let key = mesh_common::pki::NodeKey::generate().unwrap();
    let validity = Duration::from_secs(90 * 86_400);
    let csr = key.csr_pem().unwrap();
    let cert = ca
        .sign_csr(&csr, "node1", NodeRole::Worker, "cluster1", validity)
        .unwrap();
    std::fs::write(&path, cert).unwrap();
    let Cert::NotAfter(end) = certificate(&path) else {
        panic!("not read: {:?}", certificate(&path));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((end - now - 90 * 86_400).abs() < 600, "{end} vs {now}");
}

#[test]
fn the_text_report_has_a_line_per_check_and_a_fix_under_each_warning() {
    let checks = vec![
        Check::ok("vxlan", "module loaded"),
        Check::warn("ipvs", "not here", "load it"),
        Check::problem("port 2377/tcp", "in use", "stop it"),
    ];
    let want = "\
ok       vxlan          module loaded
warn     ipvs           not here
                        fix: load it
problem  port 2377/tcp  in use
                        fix: stop it
3 checks: 1 ok, 1 warn, 1 problem
";
    assert_eq!(render_text(&checks), want);

    let mut out = Vec::new();
    write_report(&mut out, &Format::Json, &checks[..2]).unwrap();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        doc,
        json!([
            {"status": "ok", "check": "vxlan", "detail": "module loaded", "fix": null},
            {"status": "warn", "check": "ipvs", "detail": "not here", "fix": "load it"},
        ])
    );
    let mut out = Vec::new();
    let template = Format::parse("{{.Status}}:{{.Check}}:{{.Fix}}", Some(&CHECK_ROWS)).unwrap();
    write_report(&mut out, &template, &checks).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "ok:vxlan:\nwarn:ipvs:load it\nproblem:port 2377/tcp:stop it\n"
    );
    assert!(Format::parse("{{.Nope}}", Some(&CHECK_ROWS)).is_err());
}

#[test]
fn clock_skew_beyond_the_round_trip_is_reported() {
    assert_eq!(check_clock(None).status, Status::Ok);
    assert_eq!(check_clock(Some(Ok((200, 10)))).status, Status::Ok);
    // 1.5 s off, but the call took 2 s: not sure enough to say.
    assert_eq!(check_clock(Some(Ok((1_500, 2_000)))).status, Status::Ok);
    let c = check_clock(Some(Ok((-5_000, 4))));
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.contains("ahead by 5000 ms"), "{}", c.detail);
    assert_eq!(check_clock(Some(Ok((90_000, 4)))).status, Status::Problem);
    assert_eq!(
        check_clock(Some(Err("no leader".into()))).status,
        Status::Warn
    );
}
