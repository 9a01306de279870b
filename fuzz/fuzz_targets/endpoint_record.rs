//! The value of a gossiped endpoint record (JSON from any node holding the cluster key),
//! parsed and checked into an endpoint: addresses, MAC, VIP, names. What it accepts must
//! survive being written back and read again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_node::worker::record::{Endpoint, EndpointRecord};

fuzz_target!(|data: &[u8]| {
    if let Some(record) = EndpointRecord::decode(data) {
        let _ = (record.ip(), record.vip_ip());
    }
    let Ok(endpoint) = Endpoint::decode("t1", data) else {
        return;
    };
    let record = endpoint.to_record();
    let again = Endpoint::decode("t1", &record.encode()).expect("a written record reads back");
    assert_eq!(again, endpoint);
});
