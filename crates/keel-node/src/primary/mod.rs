//! Primary election per group, and the facts `keel run` relies on.
//!
//! - Every node heartbeats every other node ([`crate::config::PrimarySettings`]);
//!   any message from a node also counts as hearing from it.
//! - Only the Raft leader decides ([`rules::decide`]) and the decision is
//!   committed in the log, so every node sees the same primary and term.
//! - A node holds the role only while it has confirmed, within its lease,
//!   through a linearizable read (a quorum round), that the committed state
//!   names it. The lease is one heartbeat shorter than `dead_after`, and the
//!   decider heard from the node at least as late as that confirmation, so
//!   an old primary steps down before any other node can be elected.
//!
//! See docs/primary.md.

pub mod liveness;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use self::liveness::Liveness;
use self::rules::{decide, GroupConfig};
use crate::config::PrimarySettings;
use crate::node::Node;
use crate::types::{NodeId, NodeInfo, Request, Response};

/// How often the decider (the Raft leader) evaluates every group.
pub const DECIDE_INTERVAL: Duration = Duration::from_millis(250);
pub const PATH_HEARTBEAT: &str = "/internal/heartbeat";

/// A heartbeat, and the answer to one.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: NodeId,
    pub healthy: bool,
    /// The sender is low on disk space and stores no new entries (see
    /// `disk`): a leader refuses writes that a majority cannot store.
    pub disk_low: bool,
}

#[derive(Clone, Copy, Debug)]
struct Confirmation {
    /// When the confirming read started (so the lease is conservative).
    at: Instant,
    term: u64,
    mine: bool,
}

/// The primary-election state of one node.
#[derive(Debug)]
pub struct PrimaryState {
    pub settings: PrimarySettings,
    pub liveness: Liveness,
    confirmations: Mutex<HashMap<String, Confirmation>>,
    /// When this node first saw itself elected, per group: (term, instant).
    elected: Mutex<HashMap<String, (u64, Instant)>>,
}

impl PrimaryState {
    pub fn new(settings: PrimarySettings) -> PrimaryState {
        PrimaryState {
            liveness: Liveness::new(std::time::Duration::from_millis(settings.dead_after_ms)),
            settings,
            confirmations: Mutex::new(HashMap::new()),
            elected: Mutex::new(HashMap::new()),
        }
    }
}

/// A candidate, as the decider sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CandidateStatus {
    pub node_id: NodeId,
    pub live: bool,
    pub priority: i64,
    pub live_for_ms: u64,
    pub last_heard_ms: Option<u64>,
    /// Time before this candidate may displace a live incumbent it ranks above.
    pub cooldown_remaining_ms: Option<u64>,
}

/// `GET /v1/primary/{group}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrimaryStatus {
    pub group: String,
    pub primary: Option<NodeId>,
    pub term: u64,
    pub since_ms: u64,
    pub cooldown_ms: u64,
    pub candidates: Vec<CandidateStatus>,
    /// The node whose view this is (the decider when there is a leader).
    pub reported_by: NodeId,
}

/// `GET /v1/primary/{group}/self`: what `keel run` asks its local node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SelfStatus {
    pub node_id: NodeId,
    pub group: String,
    /// This node is the group's primary and holds a valid lease.
    pub primary: bool,
    pub term: u64,
    /// How long the answer stays true without a newer one (0 if not primary).
    pub valid_for_ms: u64,
    /// The primary must wait this long before starting the workload, for
    /// the previous primary's workload to have surely stopped
    /// ([`rules::start_delay`]); 0 when it may run now.
    #[serde(default)]
    pub start_in_ms: u64,
    /// The group's handover: a supervisor kills its workload no later than
    /// this long after its lease ran out.
    #[serde(default)]
    pub handover_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a group name (it becomes a key name).
pub fn validate_group(group: &str) -> Result<(), String> {
    keel_store::key::validate_name(group)
        .map_err(|reason| format!("invalid group name {group:?}: {reason}"))
}

impl Node {
    fn primary_state(&self) -> &PrimaryState {
        &self.inner.primary
    }

    /// Records that `node` was heard from (health unknown unless given).
    pub(crate) fn heard_from(&self, node: NodeId, healthy: Option<bool>) {
        self.primary_state()
            .liveness
            .heard(node, healthy, Instant::now());
    }

    /// Answers a peer's heartbeat.
    pub(crate) fn on_heartbeat(&self, heartbeat: Heartbeat) -> Heartbeat {
        self.heard_from(heartbeat.from, Some(heartbeat.healthy));
        self.disk()
            .peer_reported(heartbeat.from, heartbeat.disk_low);
        Heartbeat {
            from: self.id(),
            healthy: self.local_health().is_ok(),
            disk_low: self.disk().is_low(),
        }
    }

    /// Sends one round of heartbeats to every other member.
    async fn heartbeat_round(&self) {
        let healthy = self.local_health().is_ok();
        self.heard_from(self.id(), Some(healthy));
        if self.inner.faults.isolated() {
            return;
        }
        let timeout = Duration::from_millis(self.primary_state().settings.heartbeat_ms);
        let metrics = self.raft().metrics().borrow().clone();
        let peers: Vec<(NodeId, NodeInfo)> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id())
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let beats = peers.into_iter().map(|(id, peer)| {
            let node = self.clone();
            async move {
                let beat = Heartbeat {
                    from: node.id(),
                    healthy,
                    disk_low: node.disk().is_low(),
                };
                let answer = node
                    .routing()
                    .post_within::<_, Heartbeat>(&peer, PATH_HEARTBEAT, &beat, timeout)
                    .await;
                if let Ok(answer) = answer {
                    node.heard_from(answer.from, Some(answer.healthy));
                    node.disk().peer_reported(answer.from, answer.disk_low);
                    return;
                }
                tracing::debug!(peer = id, "heartbeat unanswered");
            }
        });
        futures::future::join_all(beats).await;
    }

    pub(crate) fn spawn_primary_tasks(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut shutdown = node.shutdown_signal();
            let mut tick = tokio::time::interval(Duration::from_millis(
                node.primary_state().settings.heartbeat_ms,
            ));
            loop {
                tokio::select! {
                    _ = tick.tick() => node.heartbeat_round().await,
                    _ = shutdown.changed() => return,
                }
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            let mut shutdown = node.shutdown_signal();
            let mut tick = tokio::time::interval(DECIDE_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                if node.is_leader() && !node.inner.faults.isolated() {
                    node.decide_all().await;
                }
            }
        });
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The decider: evaluates every group and commits changes.
    async fn decide_all(&self) {
        let now = Instant::now();
        let voters = self.voters();
        let sm = self.state_machine();
        for group in sm.groups() {
            let (config, state) = sm.group(&group);
            if state.primary.is_some() && !self.primary_state().liveness.informed(now) {
                continue;
            }
            let views = config
                .candidates(&voters)
                .into_iter()
                .map(|node| (node, self.primary_state().liveness.view(node, now)))
                .collect();
            let Some(change) = decide(&config, &state, &voters, &views) else {
                continue;
            };
            tracing::info!(%group, from = ?state.primary, to = ?change.primary, reason = %change.reason, "changing primary");
            let request = Request::SetPrimary {
                group: group.clone(),
                expected_term: state.term,
                primary: change.primary,
                at_ms: now_ms(),
                reason: change.reason,
            };
            match tokio::time::timeout(Duration::from_secs(2), self.raft().client_write(request))
                .await
            {
                Ok(Ok(response)) => {
                    if let Response::Primary {
                        applied: false,
                        term,
                    } = response.data
                    {
                        tracing::info!(%group, term, "a newer decision was already committed");
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%group, %error, "could not commit the primary decision")
                }
                Err(_) => tracing::warn!(%group, "committing the primary decision timed out"),
            }
        }
    }

    /// The decider's view of a group (call on the leader for liveness).
    pub fn primary_status(&self, group: &str) -> PrimaryStatus {
        let now = Instant::now();
        let (config, state) = self.state_machine().group(group);
        let cooldown = config.cooldown();
        let primary_rank = state.primary.map(|p| config.rank(p));
        let candidates = config
            .candidates(&self.voters())
            .into_iter()
            .map(|node| {
                let view = self.primary_state().liveness.view(node, now);
                let ranks_above = primary_rank.is_some_and(|r| config.rank(node) < r);
                CandidateStatus {
                    node_id: node,
                    live: view.live,
                    priority: config.rank(node).0,
                    live_for_ms: view.live_for.as_millis() as u64,
                    last_heard_ms: self.primary_state().liveness.last_heard_ms(node, now),
                    cooldown_remaining_ms: (view.live && ranks_above)
                        .then(|| cooldown.saturating_sub(view.live_for).as_millis() as u64),
                }
            })
            .collect();
        PrimaryStatus {
            group: group.to_string(),
            primary: state.primary,
            term: state.term,
            since_ms: state.since_ms,
            cooldown_ms: cooldown.as_millis() as u64,
            candidates,
            reported_by: self.id(),
        }
    }

    /// A group's decisions, oldest first.
    pub fn primary_history(&self, group: &str) -> Vec<rules::Decision> {
        self.state_machine().group(group).1.history
    }

    /// Whether this node is the group's primary, with a lease: confirmed by
    /// a linearizable read of the committed decision.
    pub async fn primary_self(&self, group: &str) -> SelfStatus {
        let lease = self.primary_state().settings.lease();
        let handover = self.state_machine().group(group).0.handover();
        let not_primary = |term: u64, reason: String| SelfStatus {
            node_id: self.id(),
            group: group.to_string(),
            primary: false,
            term,
            valid_for_ms: 0,
            start_in_ms: 0,
            handover_ms: handover.as_millis() as u64,
            reason: Some(reason),
        };
        if let Err(reason) = self.inner.fence.check() {
            return not_primary(0, reason);
        }
        if let Some(reason) = self.fenced_by_health() {
            let term = self.state_machine().group(group).1.term;
            return not_primary(term, format!("fenced: {reason}"));
        }
        let started = Instant::now();
        let confirmed = match self.read_barrier().await {
            Ok(()) => {
                let (_, state) = self.state_machine().group(group);
                let confirmation = Confirmation {
                    at: started,
                    term: state.term,
                    mine: state.primary == Some(self.id()),
                };
                self.primary_state()
                    .confirmations
                    .lock()
                    .insert(group.to_string(), confirmation);
                confirmation
            }
            Err(error) => match self
                .primary_state()
                .confirmations
                .lock()
                .get(group)
                .copied()
            {
                // An earlier confirmation still holds until its lease runs out.
                Some(previous) => previous,
                None => return not_primary(0, format!("cannot confirm through a quorum: {error}")),
            },
        };
        let elapsed = confirmed.at.elapsed();
        if !confirmed.mine {
            return not_primary(
                confirmed.term,
                "another node (or none) is the primary".into(),
            );
        }
        if elapsed >= lease {
            return not_primary(
                confirmed.term,
                "lease expired: no quorum confirmed this node recently".into(),
            );
        }
        // Seen now, after the read: certainly after the term was committed.
        let first_seen = {
            let now = Instant::now();
            let mut elected = self.primary_state().elected.lock();
            let entry = elected
                .entry(group.to_string())
                .or_insert((confirmed.term, now));
            if entry.0 != confirmed.term {
                *entry = (confirmed.term, now);
            }
            entry.1
        };
        let start_in = rules::start_delay(confirmed.term, lease, handover)
            .saturating_sub(first_seen.elapsed());
        SelfStatus {
            node_id: self.id(),
            group: group.to_string(),
            primary: true,
            term: confirmed.term,
            valid_for_ms: (lease - elapsed).as_millis() as u64,
            start_in_ms: start_in.as_millis() as u64,
            handover_ms: handover.as_millis() as u64,
            reason: None,
        }
    }

    /// Sets a group's configuration (leader; others forward).
    pub async fn set_group_config(&self, group: &str, config: GroupConfig) -> Result<(), String> {
        validate_group(group)?;
        let request = Request::SetGroupConfig {
            group: group.to_string(),
            config,
        };
        tokio::time::timeout(Duration::from_secs(10), self.raft().client_write(request))
            .await
            .map_err(|_| "not committed in time: the cluster may lack a quorum".to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Every group's primary, as this node's state machine has it.
    pub fn primaries(&self) -> BTreeMap<String, (Option<NodeId>, u64)> {
        let sm = self.state_machine();
        sm.groups()
            .into_iter()
            .map(|group| {
                let (_, state) = sm.group(&group);
                (group, (state.primary, state.term))
            })
            .collect()
    }
}
