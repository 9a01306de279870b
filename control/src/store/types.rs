//! openraft type configuration of the store, and the codec for openraft's
//! own types.
//!
//! Serialization: openraft's types (log entries, vote, log ids, snapshot
//! meta, RPC requests, responses and errors) are encoded with **postcard**,
//! on disk and in `RaftPayload.data`: compact, serde-native, and it
//! round-trips all of them (the storage Suite and `codec_round_trips_*`
//! tests prove it). Our own payloads inside them (`Transaction`,
//! `TransactionResult`, snapshots) stay protobuf, carried as bytes.

use std::fmt;
use std::io::Cursor;

use mesh_proto::{Transaction, TransactionResult};
use prost::Message;
use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

openraft::declare_raft_types!(
    /// Raft types of the managers' store.
    pub TypeConfig:
        D = StoreRequest,
        R = StoreResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<u64>;

/// A replicated transaction: the raft log's application payload. Serde
/// carries it as its protobuf encoding, so the log never depends on how
/// serde would lay out generated types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreRequest(pub Transaction);

/// What applying a [`StoreRequest`] produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreResponse(pub TransactionResult);

impl Serialize for StoreRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for StoreRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = d.deserialize_byte_buf(BytesVisitor)?;
        Transaction::decode(bytes.as_slice())
            .map(StoreRequest)
            .map_err(de::Error::custom)
    }
}

impl Serialize for StoreResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for StoreResponse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = d.deserialize_byte_buf(BytesVisitor)?;
        TransactionResult::decode(bytes.as_slice())
            .map(StoreResponse)
            .map_err(de::Error::custom)
    }
}

/// Accepts bytes however the format hands them over (postcard: a byte
/// buffer; self-describing formats such as JSON: a sequence of numbers).
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("protobuf bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// Encodes one of openraft's types (see the module docs for why postcard).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes one of openraft's types.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use mesh_proto::{Node, StoreOp, store_op::Op};
    use openraft::error::{ClientWriteError, ForwardToLeader, InstallSnapshotError, RaftError};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
        VoteResponse,
    };
    use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership};

    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + fmt::Debug + PartialEq>(v: T) {
        let bytes = encode(&v).expect("encode");
        let back: T = decode(&bytes).expect("decode");
        assert_eq!(back, v);
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId {
            leader_id: CommittedLeaderId::new(term, 1),
            index,
        }
    }

    fn txn() -> Transaction {
        Transaction {
            ops: vec![StoreOp {
                op: Some(Op::PutNode(Node {
                    id: "n1".into(),
                    raft_id: 7,
                    ..Default::default()
                })),
                expect_version: Some(0),
            }],
        }
    }

    #[test]
    fn codec_round_trips_entries_of_every_kind() {
        let nodes = BTreeMap::from([(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))]);
        let membership = Membership::new(vec![BTreeSet::from([1, 2])], nodes);
        let entries = vec![
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(1, 2),
                payload: EntryPayload::Normal(StoreRequest(txn())),
            },
            Entry {
                log_id: log_id(2, 3),
                payload: EntryPayload::Membership(membership),
            },
        ];
        for e in entries {
            let bytes = encode(&e).expect("encode");
            let back: Entry = decode(&bytes).expect("decode");
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
    }

    #[test]
    fn codec_round_trips_rpc_messages() {
        let vote = Vote::new_committed(3, 1);
        let append = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(2, 9)),
            leader_commit: Some(log_id(2, 8)),
            entries: vec![Entry {
                log_id: log_id(3, 10),
                payload: EntryPayload::Normal(StoreRequest(txn())),
            }],
        };
        let bytes = encode(&append).expect("encode");
        let back: AppendEntriesRequest<TypeConfig> = decode(&bytes).expect("decode");
        assert_eq!(format!("{back:?}"), format!("{append:?}"));

        round_trip(VoteRequest {
            vote,
            last_log_id: Some(log_id(2, 9)),
        });
        round_trip(VoteResponse {
            vote,
            vote_granted: true,
            last_log_id: None,
        });
        let ok: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            Ok(AppendEntriesResponse::Conflict);
        round_trip(ok);
        let higher: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            Ok(AppendEntriesResponse::HigherVote(vote));
        round_trip(higher);

        let snap = InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 10)),
                last_membership: StoredMembership::default(),
                snapshot_id: "3-10-1".into(),
            },
            offset: 0,
            data: vec![1, 2, 3],
            done: true,
        };
        let bytes = encode(&snap).expect("encode");
        let back: InstallSnapshotRequest<TypeConfig> = decode(&bytes).expect("decode");
        assert_eq!(back, snap);

        let fatal: Result<(), RaftError<u64, InstallSnapshotError>> =
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let bytes = encode(&fatal).expect("encode");
        let back: Result<(), RaftError<u64, InstallSnapshotError>> =
            decode(&bytes).expect("decode");
        assert_eq!(back, fatal);

        let forward: Result<(), RaftError<u64, ClientWriteError<u64, BasicNode>>> = Err(
            RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                leader_id: Some(2),
                leader_node: Some(BasicNode::new("b:2")),
            })),
        );
        let bytes = encode(&forward).expect("encode");
        let back: Result<(), RaftError<u64, ClientWriteError<u64, BasicNode>>> =
            decode(&bytes).expect("decode");
        assert_eq!(format!("{back:?}"), format!("{forward:?}"));
    }

    #[test]
    fn store_request_serde_also_works_in_self_describing_formats() {
        let req = StoreRequest(txn());
        let json = serde_json::to_string(&req).expect("to json");
        let back: StoreRequest = serde_json::from_str(&json).expect("from json");
        assert_eq!(back, req);
    }
}
