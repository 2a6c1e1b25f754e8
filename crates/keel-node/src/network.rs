//! Raft traffic between nodes: postcard (compact binary) requests, never
//! JSON, sent over a peer's link (see [`crate::link`]).
//!
//! Every request carries the cluster id; a node of another cluster refuses
//! it. Failures map to openraft's error kinds so that it backs off from a
//! node that is down, not ready or low on disk space (`Unreachable`) and
//! retries a transient failure (`Network`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::faults::Faults;
use crate::link::{LinkError, Links};
use crate::types::{decode, encode, NodeId, NodeInfo, TypeConfig};

/// Header naming the cluster a request belongs to.
pub const CLUSTER_HEADER: &str = "keel-cluster";
/// Header naming the node that sent a request.
pub const NODE_HEADER: &str = "keel-node";
pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
/// Status a receiver answers while it is still fetching a snapshot's blobs.
pub const STATUS_NOT_READY: u16 = 503;
/// Status a receiver low on disk space answers to entries and snapshots.
pub const STATUS_DISK_FULL: u16 = 507;

/// When each peer last answered a Raft RPC.
pub type Contacts = Arc<Mutex<HashMap<NodeId, Instant>>>;

/// Creates connections to peers (cheap: nothing is dialled until a call).
#[derive(Clone)]
pub struct Network {
    links: Links,
    contacts: Contacts,
    faults: Faults,
}

impl Network {
    pub fn new(links: Links, contacts: Contacts, faults: Faults) -> Network {
        Network {
            links,
            contacts,
            faults,
        }
    }
}

/// A connection to one peer.
pub struct Connection {
    target: NodeId,
    url: String,
    network: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        Connection {
            target,
            url: node.addr.trim_end_matches('/').to_string(),
            network: self.clone(),
        }
    }
}

/// How one RPC failed before the peer answered it.
enum Failure {
    Unreachable(String),
    Network(String),
}

impl Connection {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Failure> {
        if self.network.faults.isolated() {
            return Err(Failure::Unreachable(format!(
                "node {}: cut off by fault injection",
                self.target
            )));
        }
        let (status, body) = self
            .network
            .links
            .call(&self.url, path, encode(request).into(), timeout)
            .await
            .map_err(|e| match e {
                LinkError::Unreachable(reason) => {
                    Failure::Unreachable(format!("node {}: {reason}", self.target))
                }
                LinkError::Network(reason) => {
                    Failure::Network(format!("node {} at {}: {reason}", self.target, self.url))
                }
            })?;
        // A node that cannot take the request yet is treated as unreachable,
        // so openraft backs off before it retries.
        if status == STATUS_NOT_READY || status == STATUS_DISK_FULL {
            return Err(Failure::Unreachable(format!(
                "node {} cannot take it now ({status}): {}",
                self.target,
                String::from_utf8_lossy(&body)
            )));
        }
        if !(200..300).contains(&status) {
            return Err(Failure::Network(format!(
                "node {} answered {status}: {}",
                self.target,
                String::from_utf8_lossy(&body)
            )));
        }
        let decoded = decode(&body).map_err(|e| {
            Failure::Network(format!("node {}: undecodable answer: {e}", self.target))
        })?;
        self.network
            .contacts
            .lock()
            .insert(self.target, Instant::now());
        Ok(decoded)
    }

    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        match self
            .call::<Req, Result<Resp, RaftError<NodeId, E>>>(path, request, option.hard_ttl())
            .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(Failure::Unreachable(reason)) => Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(reason),
            ))),
            Err(Failure::Network(reason)) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(reason),
            ))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc(PATH_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(PATH_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc(PATH_VOTE, &rpc, &option).await
    }
}
