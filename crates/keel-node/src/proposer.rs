//! Batching: many concurrent client writes become one Raft entry, and many
//! concurrent linearizable reads share one read-index round.
//!
//! openraft 0.9 appends and fsyncs one entry at a time (each append waits
//! for its flush), so throughput comes from putting many transactions in
//! each entry. The proposer drains whatever is queued into a batch of at
//! most [`PROPOSE_BATCH_TXNS_MAX`] transactions and keeps
//! [`PROPOSE_BATCHES_IN_FLIGHT_MAX`] batches in flight.
//!
//! On a follower (as its Raft metrics name another leader), a batch goes to
//! the leader in one RPC without a detour through the local Raft, whose
//! task may be busy with an fsync. The leader queues forwarded transactions
//! with its own, so the whole cluster's concurrent writes share its entries.
//! A forwarded batch is committed only where it arrives, never forwarded
//! again, so a stale view of who leads cannot make a loop.
//!
//! The leader admits a batch into its log only if its disk has room for it
//! (see [`crate::disk`]); otherwise every transaction of the batch fails with
//! [`ProposeError::DiskFull`], before anything reached the log.

use std::sync::Arc;
use std::time::Duration;

use keel_store::{Op, Txn, TxnOutcome};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::link::LinkError;
use crate::types::{decode, encode, NodeId, NodeInfo, Raft, Request, Response};

/// Transactions in one Raft entry, at most.
pub const PROPOSE_BATCH_TXNS_MAX: usize = 1024;
/// Batches being committed at once, at most. Two keep the leader's log busy
/// (one appends while the previous one is replicated) while everything that
/// arrives meanwhile waits to form the next, larger batch; more in flight
/// only made more, smaller entries, each paying Raft's fixed costs.
pub const PROPOSE_BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Queued writes, at most (further writers wait).
pub const PROPOSE_QUEUE_MAX: usize = 16 * 1024;
/// A write that is not committed within this time fails (no quorum).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const PATH_PROPOSE: &str = "/internal/propose";
pub const PATH_READ_INDEX: &str = "/internal/read-index";

/// Why a write or read could not be served (also sent from the leader to
/// a follower that forwarded a batch).
#[derive(Clone, Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
    /// The leader is low on disk space; the message names the node.
    #[error("{0}")]
    DiskFull(String),
}

/// Bytes a batch adds to a node's disk, roughly: its keys and values once
/// in the Raft log and once in the store.
pub fn batch_disk_bytes(txns: &[Txn]) -> u64 {
    let payload: usize = txns
        .iter()
        .flat_map(|txn| &txn.ops)
        .map(|op| match op {
            Op::Put { key, value } => key.len() + value.len(),
            Op::PutStored { key, .. } | Op::Delete { key } => key.len(),
            Op::DeletePrefix { prefix } => prefix.len(),
        })
        .sum();
    2 * payload as u64
}

/// Where a batch of transactions came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A client of this node: forwarded to the leader when this node does
    /// not lead.
    Client,
    /// Forwarded by a follower: committed here only if this node leads,
    /// never forwarded again (so a stale view cannot make a loop).
    Follower,
}

struct Pending {
    txns: Vec<Txn>,
    /// `txns.len()` when submitted (the transactions may move into an entry).
    count: usize,
    origin: Origin,
    reply: oneshot::Sender<Result<Vec<TxnOutcome>, ProposeError>>,
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
    pub links: crate::link::Links,
    pub node_id: NodeId,
    pub faults: crate::faults::Faults,
    pub disk: crate::disk::Disk,
}

impl Routing {
    /// The current leader's id and address, if known and not this node.
    pub fn remote_leader(&self) -> Option<(NodeId, NodeInfo)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
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
        self.post_within(leader, path, request, WRITE_TIMEOUT).await
    }

    /// Sends a request to a peer's internal endpoint (as this node, in its
    /// cluster; refused while fault injection cuts it off).
    pub(crate) async fn post_within<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        peer: &NodeInfo,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, ProposeError> {
        let forward_error = |reason: String| ProposeError::Forward {
            leader: peer.addr.clone(),
            reason,
        };
        if self.faults.isolated() {
            return Err(forward_error("cut off by fault injection".into()));
        }
        let (status, body) = self
            .links
            .call(&peer.addr, path, encode(request).into(), timeout)
            .await
            .map_err(|e| match e {
                LinkError::Unreachable(reason) | LinkError::Network(reason) => {
                    forward_error(reason)
                }
            })?;
        if !(200..300).contains(&status) {
            return Err(forward_error(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        decode(&body).map_err(|e| forward_error(e.to_string()))
    }

    /// Forwards transactions to the leader, which commits them with its own.
    async fn forward(
        &self,
        leader: &NodeInfo,
        txns: &[Txn],
    ) -> Result<Vec<TxnOutcome>, ProposeError> {
        let answer: Result<Vec<TxnOutcome>, ProposeError> =
            self.post(leader, PATH_PROPOSE, &txns).await?;
        // A full disk is the leader's verdict on the write, not a failure to
        // forward it: the client sees it as such (507).
        answer.map_err(|error| match error {
            ProposeError::DiskFull(message) => ProposeError::DiskFull(message),
            other => ProposeError::Forward {
                leader: leader.addr.clone(),
                reason: other.to_string(),
            },
        })
    }

    /// Appends `txns` as one entry of the local Raft (this node must lead)
    /// and waits until it is committed and applied.
    async fn commit_here(
        &self,
        txns: Arc<[Txn]>,
    ) -> Result<Vec<TxnOutcome>, Result<Option<NodeInfo>, ProposeError>> {
        let voters: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        self.disk
            .admit_cluster(batch_disk_bytes(&txns), &voters)
            .map_err(|message| Err(ProposeError::DiskFull(message)))?;
        let write =
            tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(Request::Txns(txns)));
        match write.await {
            Err(_) => Err(Err(ProposeError::Timeout(WRITE_TIMEOUT))),
            Ok(Ok(response)) => match response.data {
                Response::Txns(outcomes) => Ok(outcomes),
                other => Err(Err(ProposeError::Stopped(format!(
                    "unexpected response {other:?}"
                )))),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(Ok(forward.leader_node))
            }
            Ok(Err(error)) => Err(Err(ProposeError::Stopped(error.to_string()))),
        }
    }

    /// Commits a batch: as one entry here when this node leads; otherwise its
    /// clients' transactions go to the leader in one request (and those a
    /// follower forwarded here fail: they are never forwarded twice).
    async fn commit(&self, batch: Vec<Pending>) {
        if let Some((_, leader)) = self.remote_leader() {
            return self.forward_batch(&leader, batch).await;
        }
        // Moved, not copied, into the entry (shared from then on).
        let mut batch = batch;
        let txns: Arc<[Txn]> = batch
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.txns))
            .collect();
        match self.commit_here(txns.clone()).await {
            Ok(outcomes) => answer(batch, Ok(outcomes)),
            Err(Err(error)) => answer(batch, Err(error)),
            // Leadership moved between the check above and the append.
            Err(Ok(None)) => answer(batch, Err(ProposeError::NoLeader)),
            Err(Ok(Some(leader))) => {
                let mut rest = &txns[..];
                for pending in &mut batch {
                    let (own, after) = rest.split_at(pending.count);
                    pending.txns = own.to_vec();
                    rest = after;
                }
                self.forward_batch(&leader, batch).await
            }
        }
    }

    async fn forward_batch(&self, leader: &NodeInfo, batch: Vec<Pending>) {
        let (mut clients, followers): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| p.origin == Origin::Client);
        answer(
            followers,
            Err(ProposeError::Forward {
                leader: leader.addr.clone(),
                reason: "this node no longer leads".into(),
            }),
        );
        if clients.is_empty() {
            return;
        }
        let txns: Vec<Txn> = clients
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.txns))
            .collect();
        let outcomes = self.forward(leader, &txns).await;
        answer(clients, outcomes);
    }

    async fn read_index_from(&self, leader: &NodeInfo) -> Result<Option<u64>, ProposeError> {
        let answer: Result<Option<u64>, String> = self.post(leader, PATH_READ_INDEX, &()).await?;
        answer.map_err(|reason| ProposeError::Forward {
            leader: leader.addr.clone(),
            reason,
        })
    }

    /// The read index from this node's Raft, which must lead.
    async fn read_index_here(&self) -> Result<Option<u64>, Result<Option<NodeInfo>, ProposeError>> {
        use openraft::error::CheckIsLeaderError;
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.get_read_log_id()).await {
            Err(_) => Err(Err(ProposeError::Timeout(WRITE_TIMEOUT))),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map(|l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                Err(Ok(forward.leader_node))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(Err(ProposeError::Timeout(WRITE_TIMEOUT)))
            }
            Ok(Err(error)) => Err(Err(ProposeError::Stopped(error.to_string()))),
        }
    }

    /// Waits until this node has applied everything committed up to `index`.
    async fn wait_applied(&self, index: Option<u64>) -> Result<(), ProposeError> {
        let Some(index) = index else {
            return Ok(());
        };
        let (applied, stored) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (
                metrics.last_applied.map(|l| l.index),
                metrics.last_log_index,
            )
        };
        if applied >= Some(index) {
            return Ok(());
        }
        // A node low on disk space stores no new entries (see `disk`), so
        // what it lacks will not arrive until space is freed: say so now
        // rather than time out.
        if stored < Some(index) && self.disk.is_low() {
            return Err(ProposeError::DiskFull(format!(
                "disk full on node {}: it is low on disk space and lacks entries up to {index}, \
                 so it cannot serve a linearizable read; read from another node or with stale=true",
                self.node_id
            )));
        }
        self.raft
            .wait(Some(WRITE_TIMEOUT))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| ProposeError::Timeout(WRITE_TIMEOUT))
    }
}

/// Sends each pending its share of the outcomes (in order), or the error.
fn answer(batch: Vec<Pending>, outcomes: Result<Vec<TxnOutcome>, ProposeError>) {
    match outcomes {
        Ok(outcomes) => {
            let expected: usize = batch.iter().map(|p| p.count).sum();
            if outcomes.len() != expected {
                let error = ProposeError::Stopped(format!(
                    "{} outcomes for {expected} transactions",
                    outcomes.len()
                ));
                return answer(batch, Err(error));
            }
            let mut outcomes = outcomes.into_iter();
            for pending in batch {
                let share = outcomes.by_ref().take(pending.count).collect();
                let _ = pending.reply.send(Ok(share));
            }
        }
        Err(error) => {
            for pending in batch {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
    }
}

impl Proposer {
    /// Starts the batching task.
    pub fn start(routing: Routing) -> Proposer {
        let (tx, mut rx) = mpsc::channel::<Pending>(PROPOSE_QUEUE_MAX);
        let in_flight = Arc::new(Semaphore::new(PROPOSE_BATCHES_IN_FLIGHT_MAX));
        tokio::spawn(async move {
            let mut carried: Option<Pending> = None;
            loop {
                let first = match carried.take() {
                    Some(pending) => pending,
                    None => match rx.recv().await {
                        Some(pending) => pending,
                        None => break,
                    },
                };
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                // Everything that queued while the previous batches were
                // committing goes into this one.
                let mut txns = first.txns.len();
                let mut batch = vec![first];
                while txns < PROPOSE_BATCH_TXNS_MAX {
                    match rx.try_recv() {
                        Ok(pending) if txns + pending.txns.len() > PROPOSE_BATCH_TXNS_MAX => {
                            carried = Some(pending);
                            break;
                        }
                        Ok(pending) => {
                            txns += pending.txns.len();
                            batch.push(pending);
                        }
                        Err(_) => break,
                    }
                }
                let routing = routing.clone();
                tokio::spawn(async move {
                    routing.commit(batch).await;
                    drop(permit);
                });
            }
        });
        Proposer { tx }
    }

    async fn submit(
        &self,
        txns: Vec<Txn>,
        origin: Origin,
    ) -> Result<Vec<TxnOutcome>, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                count: txns.len(),
                txns,
                origin,
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped("the proposer stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Stopped("the proposer stopped".into()))?
    }

    /// Commits one transaction (batched with concurrent ones).
    pub async fn propose(&self, txn: Txn) -> Result<TxnOutcome, ProposeError> {
        let mut outcomes = self.submit(vec![txn], Origin::Client).await?;
        outcomes
            .pop()
            .ok_or_else(|| ProposeError::Stopped("no outcome for a transaction".into()))
    }

    /// Commits transactions a follower forwarded, with this node's own (only
    /// if this node leads).
    pub async fn propose_forwarded(&self, txns: Vec<Txn>) -> Result<Vec<TxnOutcome>, ProposeError> {
        self.submit(txns, Origin::Follower).await
    }
}

/// Coalesces concurrent linearizable reads into shared read-index rounds.
///
/// A round started after a read arrived gives that read a valid read index
/// (Raft §6.4): the leader confirms with a quorum that it still leads, and its
/// commit index then covers every write acknowledged before the read. Reads
/// queued while earlier rounds run share the next round. A follower's rounds
/// become requests to the leader, which serves them from its own rounds, so
/// every node's readers share the leader's.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::Sender<ReadWaiter>,
    routing: Routing,
}

struct ReadWaiter {
    origin: Origin,
    reply: oneshot::Sender<Result<Option<u64>, ProposeError>>,
}

/// Read-index rounds running at once, at most. A round costs the leader a
/// heartbeat to every follower, and a follower a request to the leader, so
/// one round at a time, shared by every read that queued meanwhile (as
/// etcd does), serves more reads per CPU than overlapping rounds: with two,
/// 64 reading clients got 10-20% fewer reads per second in the cluster
/// benchmark, and no better latency.
pub const READ_ROUNDS_IN_FLIGHT_MAX: usize = 1;

impl ReadBarrier {
    pub fn start(routing: Routing) -> ReadBarrier {
        let (tx, mut rx) = mpsc::channel::<ReadWaiter>(PROPOSE_QUEUE_MAX);
        let in_flight = Arc::new(Semaphore::new(READ_ROUNDS_IN_FLIGHT_MAX));
        let barrier = ReadBarrier {
            tx,
            routing: routing.clone(),
        };
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
                    round(&routing, waiters).await;
                    drop(permit);
                });
            }
        });
        barrier
    }

    async fn read_index(&self, origin: Origin) -> Result<Option<u64>, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ReadWaiter { origin, reply })
            .await
            .map_err(|_| ProposeError::Stopped("the read barrier stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Stopped("the read barrier stopped".into()))?
    }

    /// Returns once a local read is linearizable: a read index was obtained
    /// after the call, and this node has applied up to it.
    pub async fn wait(&self) -> Result<(), ProposeError> {
        let index = self.read_index(Origin::Client).await?;
        self.routing.wait_applied(index).await
    }

    /// The leader's read index for a follower (only if this node leads).
    pub async fn read_index_for_follower(&self) -> Result<Option<u64>, ProposeError> {
        self.read_index(Origin::Follower).await
    }
}

/// One read-index round for `waiters`.
async fn round(routing: &Routing, waiters: Vec<ReadWaiter>) {
    let (clients, followers): (Vec<ReadWaiter>, Vec<ReadWaiter>) = waiters
        .into_iter()
        .partition(|w| w.origin == Origin::Client);
    let leader = match routing.remote_leader() {
        Some((_, leader)) => Some(leader),
        None => match routing.read_index_here().await {
            Ok(index) => return reply_all(followers.into_iter().chain(clients), Ok(index)),
            Err(Err(error)) => return reply_all(followers.into_iter().chain(clients), Err(error)),
            // Leadership moved: this node's clients ask the new leader.
            Err(Ok(leader)) => leader,
        },
    };
    let not_leading = |leader: &Option<NodeInfo>| ProposeError::Forward {
        leader: leader.as_ref().map_or("-".into(), |l| l.addr.clone()),
        reason: "this node no longer leads".into(),
    };
    reply_all(followers, Err(not_leading(&leader)));
    if clients.is_empty() {
        return;
    }
    let index = match &leader {
        Some(leader) => routing.read_index_from(leader).await,
        None => Err(ProposeError::NoLeader),
    };
    reply_all(clients, index);
}

fn reply_all(
    waiters: impl IntoIterator<Item = ReadWaiter>,
    result: Result<Option<u64>, ProposeError>,
) {
    for waiter in waiters {
        let _ = waiter.reply.send(result.clone());
    }
}
