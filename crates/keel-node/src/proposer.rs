//! Batching: many concurrent client writes become one Raft entry, and many
//! concurrent linearizable reads share one read-index round.
//!
//! openraft 0.9 appends and fsyncs one entry at a time (each append waits
//! for its flush), so throughput comes from putting many transactions in
//! each entry. The proposer drains whatever is queued into a batch of at
//! most [`PROPOSE_BATCH_TXNS_MAX`] transactions and keeps a few batches in
//! flight. On a follower, batches are forwarded to the leader in one RPC.

use std::sync::Arc;
use std::time::Duration;

use keel_store::{Txn, TxnOutcome};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::network::CLUSTER_HEADER;
use crate::types::{decode, encode, NodeId, NodeInfo, Raft, Request, Response};

/// Transactions in one Raft entry, at most.
pub const PROPOSE_BATCH_TXNS_MAX: usize = 1024;
/// Batches being committed at once, at most.
pub const PROPOSE_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Queued writes, at most (further writers wait).
pub const PROPOSE_QUEUE_MAX: usize = 16 * 1024;
/// A write that is not committed within this time fails (no quorum).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const PATH_PROPOSE: &str = "/internal/propose";
pub const PATH_READ_INDEX: &str = "/internal/read-index";

/// Why a write or read could not be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader is known (the cluster may lack a quorum); retry shortly")]
    NoLeader,
    #[error("not committed within {0:?}: the cluster may lack a quorum")]
    Timeout(Duration),
    #[error("forwarding to the leader at {leader} failed: {reason}")]
    Forward { leader: String, reason: String },
    #[error("this node has stopped: {0}")]
    Stopped(String),
    #[error("node {node} is fenced ({reason}): linearizable reads are refused; add stale=true to read its possibly outdated data")]
    Isolated { node: u64, reason: String },
}

struct Pending {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome, ProposeError>>,
}

/// Submits writes; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

/// What both batchers need: the local Raft and a client for the leader.
#[derive(Clone)]
pub struct Routing {
    pub raft: Raft,
    pub http: reqwest::Client,
    pub cluster_id: Arc<String>,
    pub node_id: NodeId,
    pub faults: crate::faults::Faults,
}

impl Routing {
    /// The current leader's id and address, if known and not this node.
    pub fn remote_leader(&self) -> Option<(NodeId, NodeInfo)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        if leader == metrics.id {
            return None;
        }
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, node))
    }

    async fn post<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        leader: &NodeInfo,
        path: &str,
        request: &Req,
    ) -> Result<Resp, ProposeError> {
        let forward_error = |reason: String| ProposeError::Forward {
            leader: leader.addr.clone(),
            reason,
        };
        if self.faults.isolated() {
            return Err(forward_error("cut off by fault injection".into()));
        }
        let response = self
            .http
            .post(format!("{}{path}", leader.addr.trim_end_matches('/')))
            .header(CLUSTER_HEADER, self.cluster_id.as_str())
            .header(crate::network::NODE_HEADER, self.node_id)
            .timeout(WRITE_TIMEOUT)
            .body(encode(request))
            .send()
            .await
            .map_err(|e| forward_error(e.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| forward_error(e.to_string()))?;
        if !status.is_success() {
            return Err(forward_error(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        decode(&body).map_err(|e| forward_error(e.to_string()))
    }

    /// Commits a batch through Raft here, or on the leader.
    pub async fn commit(&self, txns: Vec<Txn>) -> Result<Vec<TxnOutcome>, ProposeError> {
        let write = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.raft.client_write(Request::Txns(txns.clone())),
        );
        match write.await {
            Err(_) => Err(ProposeError::Timeout(WRITE_TIMEOUT)),
            Ok(Ok(response)) => match response.data {
                Response::Txns(outcomes) => Ok(outcomes),
                other => Err(ProposeError::Stopped(format!(
                    "unexpected response {other:?}"
                ))),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                let leader = forward.leader_node.ok_or(ProposeError::NoLeader)?;
                let answer: Result<Vec<TxnOutcome>, String> =
                    self.post(&leader, PATH_PROPOSE, &txns).await?;
                answer.map_err(|reason| ProposeError::Forward {
                    leader: leader.addr.clone(),
                    reason,
                })
            }
            Ok(Err(error)) => Err(ProposeError::Stopped(error.to_string())),
        }
    }

    /// Waits until this node has applied everything committed before the
    /// call (a read index obtained from the leader), so that a read from the
    /// local store afterwards is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let index = match tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable()).await
        {
            Err(_) => return Err(ProposeError::Timeout(WRITE_TIMEOUT)),
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                forward,
            )))) => {
                let leader = forward.leader_node.ok_or(ProposeError::NoLeader)?;
                let answer: Result<Option<u64>, String> =
                    self.post(&leader, PATH_READ_INDEX, &()).await?;
                answer.map_err(|reason| ProposeError::Forward {
                    leader: leader.addr.clone(),
                    reason,
                })?
            }
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(
                _,
            )))) => return Err(ProposeError::Timeout(WRITE_TIMEOUT)),
            Ok(Err(error)) => return Err(ProposeError::Stopped(error.to_string())),
        };
        self.raft
            .wait(Some(WRITE_TIMEOUT))
            .applied_index_at_least(index, "read index")
            .await
            .map(|_| ())
            .map_err(|_| ProposeError::Timeout(WRITE_TIMEOUT))
    }
}

impl Proposer {
    /// Starts the batching task.
    pub fn start(routing: Routing) -> Proposer {
        let (tx, mut rx) = mpsc::channel::<Pending>(PROPOSE_QUEUE_MAX);
        let in_flight = Arc::new(Semaphore::new(PROPOSE_BATCHES_IN_FLIGHT_MAX));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let mut batch = vec![first];
                while batch.len() < PROPOSE_BATCH_TXNS_MAX {
                    match rx.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
                let routing = routing.clone();
                tokio::spawn(async move {
                    let (txns, replies): (Vec<Txn>, Vec<_>) =
                        batch.into_iter().map(|p| (p.txn, p.reply)).unzip();
                    match routing.commit(txns).await {
                        Ok(outcomes) => {
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(Ok(outcome));
                            }
                        }
                        Err(error) => {
                            for reply in replies {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Proposer { tx }
    }

    /// Commits one transaction (batched with concurrent ones).
    pub async fn propose(&self, txn: Txn) -> Result<TxnOutcome, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { txn, reply })
            .await
            .map_err(|_| ProposeError::Stopped("the proposer stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Stopped("the proposer stopped".into()))?
    }
}

/// Coalesces concurrent linearizable reads into shared read-index rounds.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::Sender<oneshot::Sender<Result<(), ProposeError>>>,
}

/// Read-index rounds running at once, at most.
const READ_ROUNDS_IN_FLIGHT_MAX: usize = 2;

impl ReadBarrier {
    pub fn start(routing: Routing) -> ReadBarrier {
        let (tx, mut rx) =
            mpsc::channel::<oneshot::Sender<Result<(), ProposeError>>>(PROPOSE_QUEUE_MAX);
        let in_flight = Arc::new(Semaphore::new(READ_ROUNDS_IN_FLIGHT_MAX));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                // Every waiter queued now arrived before this round starts.
                let mut waiters = vec![first];
                while let Ok(waiter) = rx.try_recv() {
                    waiters.push(waiter);
                }
                let routing = routing.clone();
                tokio::spawn(async move {
                    let result = routing.read_barrier().await;
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                    drop(permit);
                });
            }
        });
        ReadBarrier { tx }
    }

    /// Returns once a local read is linearizable.
    pub async fn wait(&self) -> Result<(), ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(reply)
            .await
            .map_err(|_| ProposeError::Stopped("the read barrier stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Stopped("the read barrier stopped".into()))?
    }
}
