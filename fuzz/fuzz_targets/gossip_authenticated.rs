//! What a peer holding the cluster key can send: any body (SWIM, record pushes, sync
//! requests and replies) in an envelope from a listed, live member of the scope, sealed with
//! the right key, so decoding and merging run on it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_fuzz::{NODE_B, addr_b, drain, gossip_node, keyring};

fuzz_target!(|body: &[u8]| {
    // The envelope's `from` (a postcard string: length, then bytes), then the fuzzed body.
    let mut plain = vec![u8::try_from(NODE_B.len()).expect("a short node id")];
    plain.extend_from_slice(NODE_B.as_bytes());
    plain.extend_from_slice(body);
    let sealed = keyring().seal(&plain).expect("sealing");
    let (mut node, now) = gossip_node();
    node.handle_datagram(addr_b(), &sealed, now);
    let _ = node.handle_sync_request(addr_b(), &sealed, now);
    node.handle_sync_reply(addr_b(), &sealed, now);
    drain(&mut node);
    let _ = node.records(mesh_fuzz::SCOPE);
});
