//! Elections with a pre-vote round (Raft thesis §9.6), which openraft 0.9
//! lacks.
//!
//! openraft's own election timer is off (`enable_elect: false`) and this
//! module keeps the time instead. A voter that has heard from no leader for
//! the leader lease plus a random election timeout (openraft's own timing)
//! first asks the other voters whether they would vote for it. A voter says
//! yes only if it does not lead, has itself heard from no leader within the
//! lease (nor started within it), does not abstain from votes (see
//! `Node::abstains_from_votes`), and the candidate's log is at least as up
//! to date as its own. Only with a majority of yeses, its own included,
//! does the candidate start a real election, which raises its term.
//!
//! Without this round, a node cut off from its peers called election after
//! election, raising its term each time; when it came back, that term made
//! the healthy leader step down and the cluster elect again: a second or
//! more with no writes and no primary decisions, right after the partition
//! healed. Now an isolated node keeps its term, and its return goes
//! unnoticed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::ServerState;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::types::{LogId, NodeId};

pub const PATH_PREVOTE: &str = "/internal/prevote";
/// How often the election timer is checked.
const TICK: Duration = Duration::from_millis(50);

/// "Would you vote for me?", asked before an election.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreVote {
    pub candidate: NodeId,
    pub last_log: Option<LogId>,
}

/// Whether this node leads, and the voters of its current membership.
fn leads_and_voters(node: &Node) -> (bool, Vec<NodeId>) {
    let metrics = node.raft().metrics();
    let metrics = metrics.borrow();
    let voters = metrics.membership_config.membership().voter_ids().collect();
    (metrics.state == ServerState::Leader, voters)
}

/// This node's answer to a pre-vote.
pub(crate) fn grant(node: &Node, request: &PreVote) -> bool {
    let (leads, voters) = leads_and_voters(node);
    let candidate_votes = voters.contains(&request.candidate);
    let lease = Duration::from_millis(node.config().raft.election_timeout_max_ms);
    !leads
        && candidate_votes
        && !node.abstains_from_votes()
        // Since its start counts as heard: a node restarted a moment ago
        // has not yet heard the leader its peers may still follow.
        && node.since_leader_contact().unwrap_or(node.uptime()) >= lease
        && request.last_log >= node.last_log_id()
}

/// Runs the election timer until the node shuts down.
pub(crate) fn spawn(node: Node) {
    tokio::spawn(async move {
        let mut shutdown = node.shutdown_signal();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timeout = random_timeout(&node);
        let mut last_attempt: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let (leads, voters) = leads_and_voters(&node);
            if leads || !voters.contains(&node.id()) {
                continue;
            }
            let lease = Duration::from_millis(node.config().raft.election_timeout_max_ms);
            let since_contact = node.since_leader_contact();
            let since_attempt = last_attempt.map(|at| at.elapsed());
            let due = if voters.len() == 1 {
                // A lone voter needs nobody's vote: at once, as openraft does.
                since_attempt.is_none_or(|ago| ago >= timeout)
            } else {
                match since_attempt {
                    // No leader since the last attempt (a split vote, or too
                    // few answers): try again after a new random timeout.
                    Some(ago) if since_contact.is_none_or(|c| ago < c) => ago >= timeout,
                    // A leader was heard since (or no attempt yet): wait out
                    // its lease first (a fresh start hears its leader soon).
                    _ => since_contact.unwrap_or(node.uptime()) >= lease + timeout,
                }
            };
            if !due {
                continue;
            }
            last_attempt = Some(Instant::now());
            timeout = random_timeout(&node);
            if majority_would_vote(&node, &voters).await {
                tracing::info!("pre-vote won; calling an election");
                // Fails only when Raft has stopped, which the node's health
                // and readiness report already.
                if let Err(error) = node.raft().trigger().elect().await {
                    tracing::debug!(%error, "could not start an election");
                }
            }
        }
    });
}

fn random_timeout(node: &Node) -> Duration {
    let raft = &node.config().raft;
    Duration::from_millis(
        rand::thread_rng().gen_range(raft.election_timeout_min_ms..=raft.election_timeout_max_ms),
    )
}

/// Asks the other voters at once; true with a majority of yeses, this
/// node's own included.
async fn majority_would_vote(node: &Node, voters: &[NodeId]) -> bool {
    let request = PreVote {
        candidate: node.id(),
        last_log: node.last_log_id(),
    };
    let others: Vec<_> = {
        let metrics = node.raft().metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership().clone();
        voters
            .iter()
            .filter(|id| **id != node.id())
            .filter_map(|id| membership.get_node(id).cloned())
            .collect()
    };
    // An answer must come within the shortest election timeout: a peer
    // slower than that cannot help elect anyone in time anyway.
    let within = Duration::from_millis(node.config().raft.election_timeout_min_ms);
    let mut asks: futures::stream::FuturesUnordered<_> = others
        .iter()
        .map(|peer| {
            node.routing()
                .post_within::<_, bool>(peer, PATH_PREVOTE, &request, within)
        })
        .collect();
    // Stop at a majority: a paused or cut-off voter would hold the round
    // up to `within`.
    let needed = voters.len() / 2 + 1;
    let mut yes = 1;
    while yes < needed {
        match asks.next().await {
            Some(Ok(true)) => yes += 1,
            Some(_) => {}
            None => return false,
        }
    }
    true
}
