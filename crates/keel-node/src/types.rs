//! The Raft type configuration: what the replicated log carries.

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use keel_store::{Hash, Txn, TxnOutcome};
use serde::{Deserialize, Serialize};

/// A member's id. Allocated by the cluster, never reused.
pub type NodeId = u64;

/// How to reach a member: the base URL of its HTTP endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// An entry of the replicated log (besides Raft's own blank and
/// membership entries). Applying one is deterministic on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Client transactions, batched: each gets its own revision. Shared:
    /// the leader reads each entry once per follower and once to apply, and
    /// a deep copy per read cost more than the rest of the log store.
    Txns(Arc<[Txn]>),
    /// Take the next never-used node id (for a joining node).
    AllocateNodeId,
    /// Record the cluster's identity and join token (once, at bootstrap).
    SetClusterMeta {
        cluster_id: String,
        token_hash: String,
    },
    /// Configure a primary-election group.
    SetGroupConfig {
        group: String,
        config: crate::primary::rules::GroupConfig,
    },
    /// Change a group's primary, if its term is still `expected_term` (so two
    /// deciders cannot both apply a decision); the term then grows by one.
    SetPrimary {
        group: String,
        expected_term: u64,
        primary: Option<NodeId>,
        at_ms: u64,
        reason: String,
    },
}

/// What applying an entry produced (only the leader's reaches the client).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    None,
    Txns(Vec<TxnOutcome>),
    NodeId(NodeId),
    /// Whether a `SetPrimary` applied, and the group's term afterwards.
    Primary {
        applied: bool,
        term: u64,
    },
}

openraft::declare_raft_types!(
    /// Keel's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A snapshot is a checkpoint: the data that travels is only this manifest;
/// the receiver fetches the blobs under `root` it lacks, by hash, from peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub root: Hash,
    pub revision: u64,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// What the state machine persists atomically with each root it produces
/// (the commit record's metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Encodes with the compact binary format used for Raft traffic and
/// metadata (postcard).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("in-memory values always encode")
}

/// Decodes what [`encode`] produced; a damaged or foreign input is an error.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
