//! Bytes as they arrive from the network, before authentication: a udp datagram and a tcp
//! sync frame, opened with the cluster keyring (which they almost never pass) and, the
//! rare times they do, decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_fuzz::{addr_b, drain, gossip_node, keyring, runtime};
use mesh_gossip::wire::read_frame;

fuzz_target!(|data: &[u8]| {
    let _ = keyring().open(data);
    let (mut node, now) = gossip_node();
    node.handle_datagram(addr_b(), data, now);
    let _ = node.handle_sync_request(addr_b(), data, now);
    node.handle_sync_reply(addr_b(), data, now);
    drain(&mut node);
    // The tcp framing: a length prefix, then that many bytes (or fewer, then the end).
    let mut stream = data;
    if let Ok(frame) = runtime().block_on(read_frame(&mut stream)) {
        assert!(
            frame.len() <= data.len(),
            "a frame is never longer than what arrived"
        );
        let _ = node.handle_sync_request(addr_b(), &frame, now);
    }
});
