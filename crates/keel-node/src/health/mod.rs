//! The health monitor: the signals a node keeps about itself, the
//! diagnostics built from them ([`diag`]), and the escalation ladder that
//! acts on a problem that does not go away ([`ladder`]).
//!
//! Every second the monitor observes the node (ready or why not, which
//! peers it hears, whether it makes progress), steps the ladder, and carries
//! out what the ladder decides: log and record each step, fence the node
//! while it is isolated, and ask the process that runs it
//! ([`crate::daemon`]) to restart it in-process (a nudge) or to set its Raft
//! log aside first (a rebuild). The ladder's state and its events outlive
//! those restarts ([`HealthCarry`]). See docs/health.md.

pub mod diag;
pub mod ladder;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::ladder::{Action, Evidence, LadderState, Observation};
use crate::node::Node;

/// How often the monitor looks.
const MONITOR_EVERY: Duration = Duration::from_secs(1);
/// Ladder events kept for diagnostics.
const EVENTS_MAX: usize = 50;
/// A peer within this many entries of the commit index is caught up.
const CAUGHT_UP_LAG_MAX: u64 = 200;

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the node asks of the process that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Restart in-process: reconnect, reopen the log, restart replication.
    Nudge,
    /// Set the Raft log aside, then restart: the leader sends the rest.
    Rebuild,
}

/// One step of the ladder, as shown in diagnostics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub step: String,
    pub message: String,
}

#[derive(Default)]
struct Carried {
    ladder: Option<LadderState>,
    events: VecDeque<Event>,
}

/// What outlives an in-process restart: the ladder and its events (a
/// restart is one of its steps, not the end of the episode).
#[derive(Clone, Default)]
pub struct HealthCarry {
    inner: Arc<Mutex<Carried>>,
}

impl HealthCarry {
    fn record(&self, step: &str, message: String) {
        let mut carried = self.inner.lock();
        carried.events.push_back(Event {
            at_ms: wall_ms(),
            step: step.to_string(),
            message,
        });
        while carried.events.len() > EVENTS_MAX {
            carried.events.pop_front();
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().events.iter().cloned().collect()
    }

    pub fn ladder(&self) -> Option<LadderState> {
        self.inner.lock().ladder.clone()
    }

    /// The carried state as text (to cross an exec).
    pub fn export(&self) -> String {
        let carried = self.inner.lock();
        let now = Instant::now();
        serde_json::to_string(&CarriedExport {
            ladder: carried.ladder.as_ref().map(|l| l.export(now)),
            events: carried.events.iter().cloned().collect(),
        })
        .unwrap_or_default()
    }

    /// The state [`HealthCarry::export`] wrote (an empty carry if unreadable).
    pub fn import(text: &str) -> HealthCarry {
        let now = Instant::now();
        let Ok(export) = serde_json::from_str::<CarriedExport>(text) else {
            return HealthCarry::default();
        };
        HealthCarry {
            inner: Arc::new(Mutex::new(Carried {
                ladder: export.ladder.map(|l| LadderState::import(&l, now)),
                events: export.events.into(),
            })),
        }
    }

    /// Records an event from outside the monitor (the daemon's restarts).
    pub fn note(&self, step: &str, message: String) {
        self.record(step, message);
    }
}

#[derive(Serialize, Deserialize)]
struct CarriedExport {
    ladder: Option<ladder::LadderExport>,
    events: Vec<Event>,
}

/// A node's health machinery.
pub(crate) struct Health {
    pub carry: HealthCarry,
    restart: watch::Sender<Option<Restart>>,
}

impl Health {
    pub fn new(carry: HealthCarry) -> Health {
        Health {
            carry,
            restart: watch::channel(None).0,
        }
    }
}

impl Node {
    fn health(&self) -> &Health {
        &self.inner.health
    }

    /// Turns `Some` when the node wants to be restarted (see [`Restart`]).
    pub fn restart_requested(&self) -> watch::Receiver<Option<Restart>> {
        self.health().restart.subscribe()
    }

    /// Why the ladder fenced this node (isolated), if it did: the node then
    /// holds no primary role and refuses linearizable reads.
    pub fn fenced_by_health(&self) -> Option<String> {
        let carried = self.health().carry.inner.lock();
        let ladder = carried.ladder.as_ref()?;
        ladder
            .fenced
            .then(|| ladder.problem.clone().unwrap_or_else(|| "isolated".into()))
    }

    pub fn health_carry(&self) -> &HealthCarry {
        &self.health().carry
    }

    /// Other members, and the latest time any of them was heard from.
    fn peer_contact(&self, now: Instant) -> (usize, usize, Option<Instant>) {
        let dead_after = Duration::from_millis(self.inner.config.primary.dead_after_ms);
        let others: Vec<u64> = self
            .members()
            .into_iter()
            .filter(|id| *id != self.id())
            .collect();
        let heard: Vec<Duration> = others
            .iter()
            .filter_map(|id| self.inner.primary.liveness.last_heard_ms(*id, now))
            .map(Duration::from_millis)
            .collect();
        let reachable = heard.iter().filter(|ago| **ago <= dead_after).count();
        let latest = heard.iter().min().map(|ago| now - *ago);
        (others.len(), reachable, latest)
    }

    fn members(&self) -> BTreeSet<u64> {
        self.raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    fn observe(&self) -> Observation {
        let now = Instant::now();
        let (peers, peers_reachable, last_peer_heard) = self.peer_contact(now);
        let applied = self
            .raft()
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        let fetched: u64 = self
            .fetcher()
            .in_progress()
            .iter()
            .map(|p| p.blobs_fetched)
            .sum();
        Observation {
            now,
            not_ready: self.readiness().err(),
            peers,
            peers_reachable,
            last_peer_heard,
            progress: applied + fetched,
        }
    }

    /// Asks the other voters how they are: is one of them healthy and
    /// caught up, and do the caught-up ones form a quorum without us?
    async fn gather_evidence(&self) -> Evidence {
        let metrics = self.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let others = membership
            .nodes()
            .filter(|(id, _)| **id != self.id() && voters.contains(id))
            .map(|(id, node)| {
                let (id, addr) = (*id, node.addr.clone());
                let me = self.clone();
                async move { (id, me.fetch_status(&addr).await.ok()) }
            });
        let answers = futures::future::join_all(others).await;
        let committed = answers
            .iter()
            .filter_map(|(_, s)| s.as_ref()?.committed_index)
            .max()
            .unwrap_or(0);
        let caught_up: Vec<(u64, bool)> = answers
            .iter()
            .filter_map(|(id, status)| {
                let status = status.as_ref()?;
                let caught_up = status.ready
                    && status.applied_index.unwrap_or(0) + CAUGHT_UP_LAG_MAX >= committed;
                caught_up.then_some((*id, status.leader == Some(status.node_id)))
            })
            .collect();
        // Prefer the leader: it holds every committed entry.
        let healthy_peer = caught_up
            .iter()
            .find(|(_, leader)| *leader)
            .or(caught_up.first())
            .map(|(id, _)| *id);
        Evidence {
            local_sound: self.local_soundness(),
            healthy_peer,
            quorum_without_me: caught_up.len() > voters.len() / 2,
        }
    }

    /// The node's own data directory is in place (the one it started with):
    /// a rebuild only ever replaces a log, never a directory that went away.
    /// (Damaged blobs are the scrub's business, not a reason to rebuild.)
    fn local_soundness(&self) -> Result<(), String> {
        self.inner.fence.check()
    }

    pub(crate) fn spawn_health_monitor(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut shutdown = node.shutdown_signal();
            let mut tick = tokio::time::interval(MONITOR_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                node.monitor_step().await;
            }
        });
    }

    async fn monitor_step(&self) {
        let settings = self.inner.config.health.clone();
        let seen = self.observe();
        // A copy: the fence stays visible while evidence is being gathered.
        let mut ladder = self
            .health()
            .carry
            .inner
            .lock()
            .ladder
            .clone()
            .unwrap_or_else(|| LadderState::new(seen.now));
        let evidence = if ladder.rebuild_due(&seen, &settings) && seen.peers_reachable > 0 {
            Some(self.gather_evidence().await)
        } else {
            None
        };
        let actions = ladder.step(&seen, &settings, || {
            evidence.unwrap_or_else(|| Evidence {
                local_sound: self.local_soundness(),
                healthy_peer: None,
                quorum_without_me: false,
            })
        });
        let episode_over = ladder.problem.is_none();
        self.health().carry.inner.lock().ladder = Some(ladder);
        for action in actions {
            self.carry_out(action);
        }
        if episode_over && seen.not_ready.is_none() && !self.rebuilt_logs().is_empty() {
            self.remove_rebuilt_logs_once_caught_up().await;
        }
    }

    fn carry_out(&self, action: Action) {
        let carry = &self.health().carry;
        match action {
            Action::Warn(problem) => {
                tracing::warn!(%problem, "health: a problem persists");
                carry.record("warn", problem);
            }
            Action::Fence(problem) => {
                tracing::warn!(%problem, "health: isolated; giving up primary roles and refusing linearizable reads");
                carry.record(
                    "fence",
                    format!("{problem}: no primary role, no linearizable reads"),
                );
            }
            Action::Unfence => {
                tracing::info!("health: peers heard again; fence lifted");
                carry.record("unfence", "peers heard again; fence lifted".into());
            }
            Action::Nudge { attempt, reason } => {
                let message = format!("nudge {attempt}: restarting replication ({reason})");
                tracing::warn!("health: {message}");
                carry.record("nudge", message);
                self.request_restart(Restart::Nudge);
            }
            Action::Rebuild { peer, reason } => {
                let message = format!(
                    "rebuilding the Raft log from peers (node {peer} is healthy and caught up, and so is a quorum without this node): {reason}"
                );
                tracing::warn!("health: {message}");
                carry.record("rebuild", message);
                self.request_restart(Restart::Rebuild);
            }
            Action::Withhold(reason) => {
                tracing::warn!("health: {reason}");
                carry.record("withhold", reason);
            }
            Action::Recovered(message) => {
                tracing::info!("health: {message}");
                carry.record("recovered", message);
            }
        }
    }

    fn request_restart(&self, restart: Restart) {
        if self.health().restart.receiver_count() == 0 {
            self.health().carry.record(
                "skipped",
                "this process cannot restart the node (it is not run by `keel serve`)".into(),
            );
            return;
        }
        let _ = self.health().restart.send(Some(restart));
    }

    /// Old logs set aside by a rebuild, kept until the node is ready again.
    pub fn rebuilt_logs(&self) -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.inner.config.data_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(crate::log_store::ASIDE_PREFIX)
            })
            .map(|e| e.path())
            .collect()
    }

    /// Once the node is ready and has applied what the leader has
    /// committed after a rebuild, the new copy is complete and verified:
    /// the old log can go.
    async fn remove_rebuilt_logs_once_caught_up(&self) {
        let metrics = self.raft().metrics().borrow().clone();
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        let leader = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        let leader_committed = match leader {
            Some(addr) => self
                .fetch_status(&addr)
                .await
                .ok()
                .and_then(|s| s.committed_index),
            None => None,
        };
        if leader_committed.is_none_or(|c| applied + CAUGHT_UP_LAG_MAX < c) {
            return;
        }
        for old in self.rebuilt_logs() {
            match std::fs::remove_dir_all(&old) {
                Ok(()) => {
                    tracing::info!(path = %old.display(), "health: ready after the rebuild; removed the old log");
                    self.health().carry.record(
                        "cleanup",
                        format!(
                            "ready after the rebuild; removed the old log {}",
                            old.display()
                        ),
                    );
                }
                Err(error) => {
                    tracing::warn!(path = %old.display(), %error, "cannot remove an old log")
                }
            }
        }
    }
}
