//! The etcd side of `keel bench kv --etcd` (cargo feature `etcd`).
//!
//! One gRPC client per endpoint (each one HTTP/2 connection that all of its
//! clients share, as etcd's own `benchmark` tool does with `--conns 1`), or
//! one per client with `--connections client`; clients are spread
//! round-robin over the endpoints, like Keel's. Writes are `put`;
//! reads are `get`, linearizable by default and serializable when stale.

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

use super::kv::{KvHandle, Workload};
use crate::output::CliError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One client's connection to etcd.
#[derive(Clone)]
pub struct EtcdHandle(KvClient);

impl KvHandle for EtcdHandle {
    async fn put(&self, key: &str, value: Bytes) -> Result<(), String> {
        self.0
            .clone()
            .put(key, value.to_vec(), None)
            .await
            .map(|_| ())
            .map_err(|e| format!("etcd put: {e}"))
    }

    async fn get(&self, key: &str, stale: bool) -> Result<bool, String> {
        let options = stale.then(|| GetOptions::new().with_serializable());
        self.0
            .clone()
            .get(key, options)
            .await
            .map(|answer| !answer.kvs().is_empty())
            .map_err(|e| format!("etcd get: {e}"))
    }
}

/// Connections to an etcd cluster, checked to answer.
pub struct Etcd {
    pub version: String,
    pub handles: Vec<EtcdHandle>,
}

impl Etcd {
    /// Connects as `workload.connections` asks, after checking that every
    /// endpoint answers.
    pub async fn connect(endpoints: &[String], workload: &Workload) -> anyhow::Result<Etcd> {
        let mut handles = Vec::new();
        let mut version = String::new();
        let opened = workload.connections.endpoints(endpoints, workload.clients);
        for (i, endpoint) in opened.into_iter().enumerate() {
            let options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
            let client = Client::connect([endpoint], Some(options))
                .await
                .map_err(|e| CliError::failed(format!("cannot reach etcd at {endpoint}: {e}")))?;
            // The first connection to each endpoint checks that it answers.
            if i < endpoints.len() {
                let status = client.maintenance_client().status().await.map_err(|e| {
                    CliError::failed(format!("etcd at {endpoint} does not answer: {e}"))
                })?;
                version = status.version().to_string();
            }
            handles.push(EtcdHandle(client.kv_client()));
        }
        Ok(Etcd { version, handles })
    }
}
