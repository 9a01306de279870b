//! Transactions as a raft entry carries them (protobuf, length-delimited, several in a row)
//! applied to an in-memory store state from empty: a refused transaction changes nothing,
//! and the state always survives a snapshot round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_control::store::StoreState;
use mesh_control::store::state::validate;
use mesh_proto::Transaction;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = StoreState::from_snapshot(data);
    let mut state = StoreState::default();
    let mut rest = data;
    for index in 1..=16u64 {
        let Ok(txn) = Transaction::decode_length_delimited(&mut rest) else {
            break;
        };
        let well_formed = validate(&txn).is_ok();
        let before = state.clone();
        let result = state.apply(txn, index);
        if !result.conflict.is_empty() {
            assert_eq!(state, before, "a refused transaction changed the state");
        } else {
            assert!(well_formed, "a malformed transaction applied");
        }
    }
    let back = StoreState::from_snapshot(&state.to_snapshot()).expect("a snapshot decodes");
    assert_eq!(back, state);
});
