//! Raft traffic between nodes: postcard (compact binary) requests, never
//! JSON, sent over a peer's link (see [`crate::link`]).
//!
//! Every request carries the cluster id; a node of another cluster refuses
//! it. Failures map to openraft's error kinds so that it backs off from a
//! node that is down, not ready or low on disk space (`Unreachable`) and
//! retries a transient failure (`Network`).
//!
//! openraft retries a peer that is down every half second and would log
//! every failure; a day's outage would write hundreds of thousands of
//! lines. Failures are logged here instead ([`Troubles`]): when a peer
//! starts failing, once a minute while it lasts, and when it answers again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// How often a peer that keeps failing is reported again.
const TROUBLE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Creates connections to peers (cheap: nothing is dialled until a call).
#[derive(Clone)]
pub struct Network {
    links: Links,
    contacts: Contacts,
    faults: Faults,
    troubles: Arc<Mutex<Troubles>>,
    /// How many peers `troubles` holds, read without its lock: every
    /// answered call checks it, and it is almost always zero.
    troubled: Arc<AtomicUsize>,
}

impl Network {
    pub fn new(links: Links, contacts: Contacts, faults: Faults) -> Network {
        Network {
            links,
            contacts,
            faults,
            troubles: Arc::default(),
            troubled: Arc::default(),
        }
    }
}

/// Peers whose Raft calls fail: when each began, and when it was last
/// reported.
#[derive(Default)]
struct Troubles {
    peers: HashMap<NodeId, Trouble>,
}

struct Trouble {
    since: Instant,
    reported: Instant,
    failures: u64,
}

/// What to log about a peer after a call.
#[derive(Debug, PartialEq)]
enum Report {
    Began,
    Lasts { for_: Duration, failures: u64 },
    Ended { after: Duration, failures: u64 },
}

impl Troubles {
    fn failed(&mut self, peer: NodeId, now: Instant) -> Option<Report> {
        let Some(trouble) = self.peers.get_mut(&peer) else {
            let trouble = Trouble {
                since: now,
                reported: now,
                failures: 1,
            };
            self.peers.insert(peer, trouble);
            return Some(Report::Began);
        };
        trouble.failures += 1;
        if now.duration_since(trouble.reported) < TROUBLE_REPORT_EVERY {
            return None;
        }
        trouble.reported = now;
        Some(Report::Lasts {
            for_: now.duration_since(trouble.since),
            failures: trouble.failures,
        })
    }

    fn answered(&mut self, peer: NodeId, now: Instant) -> Option<Report> {
        let trouble = self.peers.remove(&peer)?;
        Some(Report::Ended {
            after: now.duration_since(trouble.since),
            failures: trouble.failures,
        })
    }
}

impl Network {
    fn log_failure(&self, peer: NodeId, reason: &str) {
        let report = {
            let mut troubles = self.troubles.lock();
            let report = troubles.failed(peer, Instant::now());
            self.troubled.store(troubles.peers.len(), Ordering::Relaxed);
            report
        };
        match report {
            Some(Report::Began) => {
                tracing::warn!(peer, "Raft calls to node {peer} fail: {reason}; retrying")
            }
            Some(Report::Lasts { for_, failures }) => tracing::warn!(
                peer,
                "Raft calls to node {peer} have failed for {}s ({failures} calls): {reason}; retrying",
                for_.as_secs()
            ),
            _ => {}
        }
    }

    fn log_answer(&self, peer: NodeId) {
        if self.troubled.load(Ordering::Relaxed) == 0 {
            return;
        }
        let report = {
            let mut troubles = self.troubles.lock();
            let report = troubles.answered(peer, Instant::now());
            self.troubled.store(troubles.peers.len(), Ordering::Relaxed);
            report
        };
        if let Some(Report::Ended { after, failures }) = report {
            tracing::info!(
                peer,
                "node {peer} answers Raft calls again after {:.1}s ({failures} failed meanwhile)",
                after.as_secs_f64()
            );
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
        let result = self
            .call::<Req, Result<Resp, RaftError<NodeId, E>>>(path, request, option.hard_ttl())
            .await;
        match &result {
            Ok(_) => self.network.log_answer(self.target),
            Err(Failure::Unreachable(reason) | Failure::Network(reason)) => {
                self.network.log_failure(self.target, reason)
            }
        }
        match result {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_when_it_begins_once_a_minute_and_when_it_ends() {
        let mut troubles = Troubles::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(troubles.answered(2, at(0)), None, "a healthy peer");
        assert_eq!(troubles.failed(2, at(0)), Some(Report::Began));
        // openraft retries every half second: quiet until a minute passed.
        for ms in (500..60_000).step_by(500) {
            assert_eq!(troubles.failed(2, at(ms)), None, "at {ms} ms");
        }
        assert_eq!(
            troubles.failed(3, at(1_000)),
            Some(Report::Began),
            "each peer"
        );
        assert_eq!(
            troubles.failed(2, at(60_000)),
            Some(Report::Lasts {
                for_: Duration::from_secs(60),
                failures: 121
            })
        );
        assert_eq!(troubles.failed(2, at(60_500)), None);
        assert_eq!(
            troubles.answered(2, at(61_000)),
            Some(Report::Ended {
                after: Duration::from_secs(61),
                failures: 122
            })
        );
        assert_eq!(troubles.answered(2, at(61_500)), None, "reported once");
        assert_eq!(troubles.failed(2, at(62_000)), Some(Report::Began), "anew");
    }
}
