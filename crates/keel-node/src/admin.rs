//! Forming and joining a cluster (run before `keel serve`, on a stopped node).

use std::path::Path;

use keel_store::{Store, StoreError, StoreOptions};

use crate::api::{JoinRequest, JoinResponse};
use crate::client::{Client, ClientError};

/// How long `join` keeps retrying a cluster that is not ready to admit.
const JOIN_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);
use crate::identity::NodeIdentity;

/// The result of `keel init`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Founded {
    pub cluster_id: String,
    pub node_id: u64,
    /// Give this to `keel join` on the other nodes.
    pub join_token: String,
    pub store_id: String,
}

fn open_or_init(dir: &Path) -> anyhow::Result<Store> {
    match Store::open(dir, StoreOptions::default()) {
        Ok(store) => Ok(store),
        Err(StoreError::NoDataDir { .. } | StoreError::NotInitialised { .. }) => {
            Ok(Store::init(dir, StoreOptions::default())?)
        }
        Err(error) => Err(error.into()),
    }
}

/// Makes `dir` the first member (node 1) of a new cluster. An existing
/// store keeps its data (it becomes the cluster's initial state); a missing
/// or empty directory gets a new store.
pub fn init_cluster(dir: &Path) -> anyhow::Result<Founded> {
    if NodeIdentity::exists(dir) {
        anyhow::bail!(
            "{} already belongs to a cluster ({}); refusing to found another one",
            dir.display(),
            dir.join(crate::identity::NODE_FILE).display()
        );
    }
    let store = open_or_init(dir)?;
    let store_id = store.identity().store_id.clone();
    store.close()?;
    let mut identity = NodeIdentity::new(uuid::Uuid::new_v4().to_string(), 1, store_id.clone());
    let token = hex::encode(rand::random::<[u8; 16]>());
    identity.bootstrap_token = Some(token.clone());
    identity.save(dir)?;
    Ok(Founded {
        cluster_id: identity.cluster_id,
        node_id: 1,
        join_token: token,
        store_id,
    })
}

/// Joins the cluster at `endpoint` as a new member that will serve at
/// `advertise`. `dir` must be missing, empty, or a store that was never a
/// member: a node never rejoins under an old id.
pub async fn join_cluster(
    dir: &Path,
    endpoint: &str,
    token: &str,
    advertise: &str,
) -> anyhow::Result<JoinResponse> {
    if NodeIdentity::exists(dir) {
        anyhow::bail!(
            "{} already belongs to a cluster; a node never rejoins under its old id: join from an empty data directory",
            dir.display()
        );
    }
    let owned = dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || open_or_init(&owned)).await??;
    if store.revision() > 0 {
        anyhow::bail!(
            "{} holds data (revision {}); a joining node must start empty (its state comes from the cluster)",
            dir.display(),
            store.revision()
        );
    }
    let store_id = store.identity().store_id.clone();
    store.close()?;
    let request = JoinRequest {
        token: token.to_string(),
        addr: advertise.trim_end_matches('/').to_string(),
    };
    let client = Client::new(endpoint);
    let started = std::time::Instant::now();
    let answer = loop {
        match client.join(&request).await {
            Ok(answer) => break answer,
            // A cluster that is electing a leader or bootstrapping asks to retry.
            Err(ClientError::Api { status: 503, .. }) if started.elapsed() < JOIN_RETRY_FOR => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    NodeIdentity::new(answer.cluster_id.clone(), answer.node_id, store_id).save(dir)?;
    Ok(answer)
}
