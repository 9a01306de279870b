//! Free text a user gives the CLI: `--publish`, `--publish-rm`, `--network` and subnets. Each
//! either parses into a value within its rules or fails with one line naming the flag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_control::allocator::network::parse_subnet;
use mesh_node::cli::{parse_network, parse_publish, port_key};

fn one_line(flag: &str, err: impl std::fmt::Display) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "{flag}: a multi-line error: {text}");
    assert!(
        text.starts_with(flag),
        "{flag}: an error not naming it: {text}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_publish(text) {
        Ok(p) => assert!((1..=65535).contains(&p.target_port) && p.published_port <= 65535),
        Err(e) => one_line("--publish", e),
    }
    match port_key(text) {
        Ok((port, _)) => assert!((1..=65535).contains(&port)),
        Err(e) => one_line("--publish-rm", e),
    }
    match parse_network(text) {
        Ok(n) => {
            assert!(!n.target.is_empty(), "a network with no name from {text:?}");
            assert!(
                n.aliases.iter().all(|a| !a.is_empty()),
                "an empty alias from {text:?}"
            );
        }
        Err(e) => one_line("--network", e),
    }
    match parse_subnet("--subnet", text) {
        Ok(net) => assert_eq!(net.network(), net.addr(), "host bits set in {net}"),
        Err(e) => one_line("--subnet", e),
    }
});
