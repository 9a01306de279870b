//! Need root: each test builds its own namespaces (`TempNetns`: `md<pid>x<n>-...`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use super::*;
use crate::netns::{Netns, TempNetns};
use crate::types::IfName;

/// Two namespaces, removed on drop (also on panic); the veth goes with them.
struct Pair {
    a: TempNetns,
    b: TempNetns,
}

fn name(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

/// Two namespaces joined by a veth `v0` (in a, 10.99.0.1/24) <-> `v1` (in b, 10.99.0.2/24).
fn pair() -> Pair {
    let pair = Pair {
        a: TempNetns::new("a").unwrap(),
        b: TempNetns::new("b").unwrap(),
    };
    // Created from the calling (root) namespace: both ends land directly in a and b.
    Netns::current()
        .unwrap()
        .run_async(async || {
            let nl = Netlink::connect("root")?;
            nl.ensure_veth_pair(&name("v0"), &pair.a, &name("v1"), &pair.b)
                .await
        })
        .unwrap()
        .unwrap();
    for (ns, ifname, addr) in [
        (&pair.a, "v0", "10.99.0.1/24"),
        (&pair.b, "v1", "10.99.0.2/24"),
    ] {
        in_netns(ns, async |nl| {
            nl.set_up(&name("lo")).await?;
            nl.ensure_address(&name(ifname), addr.parse()?).await?;
            nl.set_up(&name(ifname)).await
        })
        .unwrap();
    }
    pair
}

#[test]
fn veth_between_namespaces_carries_tcp_and_udp() {
    let pair = pair();
    // No end of the pair appeared in the root namespace.
    let in_root = Netns::current()
        .unwrap()
        .run_async(async || Netlink::connect("root")?.link_index(&name("v0")).await)
        .unwrap()
        .unwrap();
    assert_eq!(in_root, None);

    let listener = pair
        .b
        .run(|| TcpListener::bind("10.99.0.2:7000"))
        .unwrap()
        .unwrap();
    let udp_b = pair
        .b
        .run(|| UdpSocket::bind("10.99.0.2:7001"))
        .unwrap()
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut conn, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip(), Ipv4Addr::new(10, 99, 0, 1));
            conn.write_all(b"pong").unwrap();
        });
        let reply = pair
            .a
            .run(|| -> std::io::Result<String> {
                let addr: SocketAddr = "10.99.0.2:7000".parse().unwrap();
                let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                let mut reply = String::new();
                conn.read_to_string(&mut reply)?;
                Ok(reply)
            })
            .unwrap()
            .unwrap();
        assert_eq!(reply, "pong");
    });

    let udp_a = pair
        .a
        .run(|| UdpSocket::bind("10.99.0.1:0"))
        .unwrap()
        .unwrap();
    udp_a.send_to(b"ping", "10.99.0.2:7001").unwrap();
    udp_b
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = udp_b.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"ping"[..], IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)))
    );
}

#[test]
fn repeated_ensure_is_idempotent() {
    let pair = pair();
    in_netns(&pair.a, async |nl| {
        let (v0, br) = (name("v0"), name("br0"));
        let first = nl.ensure_bridge(&br).await?;
        assert_eq!(nl.ensure_bridge(&br).await?, first);
        nl.ensure_address(&v0, "10.99.0.1/24".parse()?).await?;
        assert_eq!(nl.addresses(&v0).await?, vec!["10.99.0.1/24".parse()?]);
        nl.set_up(&v0).await?;
        nl.set_controller(&v0, &br).await?;
        nl.set_controller(&v0, &br).await?;
        nl.set_down(&v0).await?;
        nl.set_down(&v0).await?;
        assert!(!nl.is_up(&v0).await?);
        nl.remove_link(&br).await?;
        nl.remove_link(&br).await?;
        assert_eq!(nl.link_index(&br).await?, None);
        Ok(())
    })
    .unwrap();
    // The veth already exists: ensuring it again is success.
    in_netns(&pair.a, async |nl| {
        nl.ensure_veth_pair(&name("v0"), &pair.a, &name("v1"), &pair.b)
            .await
    })
    .unwrap();
}

#[test]
fn missing_link_errors_name_it() {
    let pair = pair();
    let err = in_netns(&pair.a, async |nl| nl.set_up(&name("nope0")).await).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("link nope0 not found in {}", pair.a.name())
    );
}

#[test]
fn dropping_the_pair_removes_both_namespaces() {
    let pair = pair();
    let (a, b) = (pair.a.name().to_owned(), pair.b.name().to_owned());
    drop(pair);
    assert!(!Netns::exists(&a) && !Netns::exists(&b));
    assert!(!Netns::list().unwrap().iter().any(|n| *n == a || *n == b));
}
