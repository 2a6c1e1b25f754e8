//! Which member of which cluster a data directory belongs to.
//!
//! `D/node.json` records the cluster id, the node id, the id of the store it
//! was created with, and a random incarnation. A node id is never reused,
//! and the identity lives only in the data directory: a wiped, empty,
//! replaced or unmounted directory has no identity (or a foreign one), so
//! it can never start, vote or acknowledge under its old id. `keel join`
//! brings such a node back as a new member.

use std::path::{Path, PathBuf};

use keel_store::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

pub const NODE_FILE: &str = "node.json";

/// The membership identity of a data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// `IDENTITY.store_id` of the store this node was created with.
    pub store_id: String,
    /// Random per membership: tells two lives of a directory apart.
    pub incarnation: String,
    /// Only on the founding node until the cluster has recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    #[serde(flatten)]
    identity: NodeIdentity,
    checksum: String,
}

fn checksum(identity: &NodeIdentity) -> String {
    let json = serde_json::to_vec(identity).expect("identity serializes");
    format!("crc32c-{:08x}", crc32c::crc32c(&json))
}

/// Why a directory cannot serve as a member.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{dir} is not a member of any cluster: create a cluster with `keel init --data-dir {dir}` or join one with `keel join --data-dir {dir} --endpoint URL --token TOKEN`")]
    NotAMember { dir: String },
    #[error("{path} is damaged ({reason}); this node cannot prove who it is: rejoin it as a new member with `keel join` on an empty data directory")]
    Damaged { path: String, reason: String },
    #[error("{dir} holds node {node_id} of cluster {cluster_id}, but its store was replaced (store {found}, expected {expected}); refusing to start as node {node_id}. Rejoin with `keel join` on an empty data directory")]
    StoreReplaced {
        dir: String,
        node_id: NodeId,
        cluster_id: String,
        found: String,
        expected: String,
    },
}

fn path_of(dir: &Path) -> PathBuf {
    dir.join(NODE_FILE)
}

impl NodeIdentity {
    /// A fresh identity for `node_id` in `cluster_id`, bound to `store_id`.
    pub fn new(cluster_id: String, node_id: NodeId, store_id: String) -> NodeIdentity {
        NodeIdentity {
            cluster_id,
            node_id,
            store_id,
            incarnation: uuid::Uuid::new_v4().to_string(),
            bootstrap_token: None,
        }
    }

    /// Whether `dir` has a node identity at all.
    pub fn exists(dir: &Path) -> bool {
        path_of(dir).exists()
    }

    /// Reads the identity and checks it belongs to the store in `dir`.
    pub fn load(dir: &Path, store_id: &str) -> Result<NodeIdentity, IdentityError> {
        let path = path_of(dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::NotAMember {
                    dir: dir.display().to_string(),
                })
            }
            Err(e) => {
                return Err(IdentityError::Damaged {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let damaged = |reason: String| IdentityError::Damaged {
            path: path.display().to_string(),
            reason,
        };
        let file: NodeFile = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if file.checksum != checksum(&file.identity) {
            return Err(damaged("checksum mismatch".into()));
        }
        let identity = file.identity;
        if identity.store_id != store_id {
            return Err(IdentityError::StoreReplaced {
                dir: dir.display().to_string(),
                node_id: identity.node_id,
                cluster_id: identity.cluster_id.clone(),
                found: store_id.to_string(),
                expected: identity.store_id.clone(),
            });
        }
        Ok(identity)
    }

    /// Writes the identity atomically and durably.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let file = NodeFile {
            identity: self.clone(),
            checksum: checksum(self),
        };
        let mut bytes = serde_json::to_vec_pretty(&file)?;
        bytes.push(b'\n');
        write_atomic(
            &dir.join(keel_store::datadir::STAGING_DIR),
            &path_of(dir),
            &bytes,
        )?;
        Ok(())
    }
}
