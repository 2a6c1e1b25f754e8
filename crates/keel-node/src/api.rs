//! JSON types of the client API (see docs/API.md), shared by the server and
//! the client so both sides agree by construction.

use base64::Engine;
use bytes::Bytes;
use keel_store::{Compare, ItemKind, Op, Txn, TxnOutcome};
use serde::{Deserialize, Serialize};

use crate::fetch::FetchProgress;
use crate::types::NodeId;

/// A value in JSON: UTF-8 text when it is text, else base64.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl JsonValue {
    pub fn from_bytes(bytes: &[u8]) -> JsonValue {
        match std::str::from_utf8(bytes) {
            Ok(text) => JsonValue {
                value: Some(text.to_string()),
                value_base64: None,
            },
            Err(_) => JsonValue {
                value: None,
                value_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }

    pub fn to_bytes(&self) -> Result<Bytes, String> {
        match (&self.value, &self.value_base64) {
            (Some(text), None) => Ok(Bytes::from(text.clone().into_bytes())),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes::from)
                .map_err(|e| format!("value_base64 is not valid base64: {e}")),
            (None, None) => Err("a put needs `value` or `value_base64`".into()),
            (Some(_), Some(_)) => Err("give either `value` or `value_base64`, not both".into()),
        }
    }
}

/// A value read with `GET /v1/kv/{key}?json=true`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    /// Revision of the last change to this key.
    pub revision: u64,
    pub size: u64,
    #[serde(flatten)]
    pub value: JsonValue,
    /// The store's revision when the read was served.
    pub store_revision: u64,
}

/// Result of a write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteResult {
    pub revision: u64,
    pub changed: bool,
    pub deleted: u64,
}

/// One entry of a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListEntry {
    pub key: String,
    pub kind: ItemKind,
    pub size: u64,
    pub revision: u64,
}

/// An operation of `POST /v1/txn`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnOp {
    Put {
        key: String,
        #[serde(flatten)]
        value: JsonValue,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

/// The body of `POST /v1/txn`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

impl TxnRequest {
    pub fn into_txn(self) -> Result<Txn, String> {
        let ops = self
            .ops
            .into_iter()
            .map(|op| {
                Ok(match op {
                    TxnOp::Put { key, value } => Op::Put {
                        key,
                        value: value.to_bytes()?,
                    },
                    TxnOp::Delete { key } => Op::Delete { key },
                    TxnOp::DeletePrefix { prefix } => Op::DeletePrefix { prefix },
                })
            })
            .collect::<Result<Vec<Op>, String>>()?;
        Ok(Txn {
            compare: self.compare,
            ops,
        })
    }
}

/// The answer of `POST /v1/txn`: the store's outcome.
pub type TxnResponse = TxnOutcome;

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// For a failed comparison: the key's actual revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_revision: Option<u64>,
}

/// `POST /v1/cluster/join`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    /// Base URL the new node will serve at.
    pub addr: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Members removed because the new node replaces them (same address).
    pub replaced: Vec<NodeId>,
}

/// One node's view of itself (`GET /v1/status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub addr: String,
    /// leader, follower, learner, candidate or shutdown.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The store's revision (including applied changes not yet flushed).
    pub revision: u64,
    /// The newest flushed root and its revision: equal roots at equal
    /// revisions prove two replicas hold the same data.
    pub root: Option<String>,
    pub root_revision: u64,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    /// Milliseconds since the leader was last heard from (followers).
    pub last_leader_contact_ms: Option<u64>,
    pub fetches: Vec<FetchProgress>,
    pub pack_bytes: u64,
    pub log_bytes: u64,
    pub uptime_ms: u64,
}

/// One member in `GET /v1/cluster/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub addr: String,
    /// voter or learner (in the membership).
    pub membership: String,
    /// The leader's replication position for this member.
    pub matched_index: Option<u64>,
    /// Entries behind the leader's last log index.
    pub lag: Option<u64>,
    /// Milliseconds since the leader last heard from this member.
    pub last_contact_ms: Option<u64>,
    /// The member's own status, if it answered.
    pub status: Option<NodeStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/cluster/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub leader: Option<NodeId>,
    /// The answering node's id.
    pub reported_by: NodeId,
    pub members: Vec<MemberStatus>,
}

/// One group in `GET /v1/primary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupPrimary {
    pub group: String,
    pub primary: Option<u64>,
    pub term: u64,
}

/// A line of `GET /v1/primary/{group}/watch`: the group's primary changed
/// (the first line is the current state).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrimaryChange {
    pub group: String,
    pub primary: Option<u64>,
    pub term: u64,
    /// When the decision was made (ms since the Unix epoch).
    pub since_ms: u64,
    pub reason: Option<String>,
}
