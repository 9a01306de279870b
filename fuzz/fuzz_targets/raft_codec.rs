//! Raft messages between managers and raft log entries on disk, as the postcard codec
//! decodes them: the first byte picks the message type. Whatever decodes must encode and
//! decode again to the same value.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use mesh_control::store::codec::{
    Entry, LogId, SnapshotMeta, StoreRequest, StoreResponse, TypeConfig, Vote, decode, encode,
};
use openraft::BasicNode;
use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest,
    InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn check<T: Serialize + DeserializeOwned + Debug>(bytes: &[u8]) {
    let Ok(value) = decode::<T>(bytes) else {
        return;
    };
    let encoded = encode(&value).expect("a decoded value encodes");
    let again: T = decode(&encoded).expect("an encoded value decodes");
    assert_eq!(format!("{again:?}"), format!("{value:?}"));
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 14 {
        0 => check::<Entry>(bytes),
        1 => check::<Vote>(bytes),
        2 => check::<LogId>(bytes),
        3 => check::<SnapshotMeta>(bytes),
        4 => check::<AppendEntriesRequest<TypeConfig>>(bytes),
        5 => check::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(bytes),
        6 => check::<VoteRequest<u64>>(bytes),
        7 => check::<Result<VoteResponse<u64>, RaftError<u64>>>(bytes),
        8 => check::<InstallSnapshotRequest<TypeConfig>>(bytes),
        9 => check::<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>>(
            bytes,
        ),
        10 => check::<
            Result<
                ClientWriteResponse<TypeConfig>,
                RaftError<u64, ClientWriteError<u64, BasicNode>>,
            >,
        >(bytes),
        11 => check::<StoreRequest>(bytes),
        12 => check::<StoreResponse>(bytes),
        _ => check::<Vec<Entry>>(bytes),
    }
});
