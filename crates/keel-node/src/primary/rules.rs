//! The election rules of a primary, as a pure function of what the decider
//! knows, so they can be tested on a controllable clock.
//!
//! (quptime's rule, made safe by consensus: the decision is committed in the
//! replicated log, so every node sees the same primary and term.)
//!
//! - No primary without quorum: only the Raft leader decides, and only a
//!   committed decision counts.
//! - No incumbent (bootstrap, or no candidate was live): the best live
//!   candidate is elected at once.
//! - The incumbent is dead, unhealthy, or no longer a candidate: the best live
//!   candidate takes over at once (or nobody, if none is live).
//! - A better candidate may displace a live incumbent only after it has been
//!   continuously live for the group's cooldown; a flap restarts its timer.
//! - "Better" orders by priority, then node id, lower first.
//! - Every change of primary, including to and from nobody, is a new term.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Default cooldown before a better candidate displaces a live incumbent.
pub const COOLDOWN_DEFAULT: Duration = Duration::from_secs(120);
/// Default time a new primary's workload waits, on top of the lease, for
/// the previous primary's workload to have surely stopped (see [`start_delay`]).
pub const HANDOVER_DEFAULT: Duration = Duration::from_secs(10);
/// Decisions kept in a group's history.
pub const HISTORY_MAX: usize = 100;
/// The group every cluster has.
pub const DEFAULT_GROUP: &str = "default";

/// A group's configuration (replicated).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// The nodes that may be primary; `None` means every voter.
    #[serde(default)]
    pub candidates: Option<Vec<NodeId>>,
    /// Lower wins; a node without a priority ranks by its id.
    #[serde(default)]
    pub priorities: BTreeMap<NodeId, i64>,
    /// `None` means [`COOLDOWN_DEFAULT`].
    #[serde(default)]
    pub cooldown_ms: Option<u64>,
    /// The most time a workload gets to stop after its node lost the role;
    /// `None` means [`HANDOVER_DEFAULT`].
    #[serde(default)]
    pub handover_ms: Option<u64>,
}

impl GroupConfig {
    pub fn cooldown(&self) -> Duration {
        self.cooldown_ms
            .map_or(COOLDOWN_DEFAULT, Duration::from_millis)
    }

    pub fn handover(&self) -> Duration {
        self.handover_ms
            .map_or(HANDOVER_DEFAULT, Duration::from_millis)
    }

    /// The candidates, given the current voters.
    pub fn candidates(&self, voters: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        match &self.candidates {
            Some(list) => list.iter().copied().collect(),
            None => voters.clone(),
        }
    }

    /// The ranking key of a node: lower is better.
    pub fn rank(&self, node: NodeId) -> (i64, NodeId) {
        (
            self.priorities.get(&node).copied().unwrap_or(node as i64),
            node,
        )
    }
}

/// One decision, as remembered in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub term: u64,
    pub primary: Option<NodeId>,
    /// Wall-clock time of the decision (ms since the Unix epoch).
    pub at_ms: u64,
    pub reason: String,
}

/// A group's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub primary: Option<NodeId>,
    /// Increases with every change of primary: the fencing token.
    pub term: u64,
    pub since_ms: u64,
    pub history: Vec<Decision>,
}

impl GroupState {
    /// Records a decision (the caller checked the term it was based on).
    pub fn apply(&mut self, primary: Option<NodeId>, at_ms: u64, reason: String) {
        self.term += 1;
        self.primary = primary;
        self.since_ms = at_ms;
        self.history.push(Decision {
            term: self.term,
            primary,
            at_ms,
            reason,
        });
        if self.history.len() > HISTORY_MAX {
            self.history.remove(0);
        }
    }
}

/// How long the primary of `term` waits, from the moment it first sees
/// itself elected, before it starts the group's workload.
///
/// The previous primary last confirmed its role at some instant `c` before
/// the new term was committed (a linearizable read that still named it), so
/// its lease ends by `c + lease` and its supervisor kills the workload by
/// `c + lease + handover`. The new primary sees its term after the commit,
/// so waiting `lease + handover` from then starts strictly after: no two
/// workloads of a group ever run at once, whatever the failure (a dead, a
/// paused or a cut-off node). Term 1 has no predecessor. Safety rests only
/// on every node using the same lease and on clocks that tick at about the
/// same rate, not on liveness detection being right.
pub fn start_delay(term: u64, lease: Duration, handover: Duration) -> Duration {
    if term <= 1 {
        Duration::ZERO
    } else {
        lease + handover
    }
}

/// What the decider knows about one candidate, now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateView {
    /// Heartbeats are fresh and the node reports itself healthy.
    pub live: bool,
    /// How long it has been continuously live.
    pub live_for: Duration,
}

/// A change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub primary: Option<NodeId>,
    pub reason: String,
}

/// Decides whether the group's primary should change.
pub fn decide(
    config: &GroupConfig,
    state: &GroupState,
    voters: &BTreeSet<NodeId>,
    views: &BTreeMap<NodeId, CandidateView>,
) -> Option<Change> {
    let candidates = config.candidates(voters);
    let live = |node: &NodeId| views.get(node).is_some_and(|v| v.live);
    let mut ranked: Vec<NodeId> = candidates.iter().copied().filter(live).collect();
    ranked.sort_by_key(|node| config.rank(*node));
    let best = ranked.first().copied();
    match state.primary {
        None => best.map(|node| Change {
            primary: Some(node),
            reason: "no primary: the best live candidate is elected at once".into(),
        }),
        Some(incumbent) if !candidates.contains(&incumbent) => Some(Change {
            primary: best,
            reason: format!("node {incumbent} is no longer a candidate"),
        }),
        Some(incumbent) if !live(&incumbent) => Some(Change {
            primary: best,
            reason: match best {
                Some(_) => format!(
                    "node {incumbent} is dead or unhealthy: the best live candidate takes over"
                ),
                None => format!("node {incumbent} is dead or unhealthy, and no candidate is live"),
            },
        }),
        Some(incumbent) => {
            let cooldown = config.cooldown();
            let better = ranked
                .iter()
                .copied()
                .take_while(|node| config.rank(*node) < config.rank(incumbent))
                .find(|node| views[node].live_for >= cooldown)?;
            Some(Change {
                primary: Some(better),
                reason: format!(
                    "node {better} ranks above node {incumbent} and has been live for the cooldown ({})",
                    humantime::format_duration(cooldown)
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    /// A controllable clock: liveness streaks as seen by the decider.
    struct Clock {
        now: Duration,
        since: BTreeMap<NodeId, Option<Duration>>,
    }

    impl Clock {
        fn new(live: &[NodeId]) -> Clock {
            Clock {
                now: Duration::ZERO,
                since: live.iter().map(|n| (*n, Some(Duration::ZERO))).collect(),
            }
        }
        fn advance(&mut self, by: Duration) {
            self.now += by;
        }
        fn down(&mut self, node: NodeId) {
            self.since.insert(node, None);
        }
        fn up(&mut self, node: NodeId) {
            self.since.insert(node, Some(self.now));
        }
        fn views(&self) -> BTreeMap<NodeId, CandidateView> {
            self.since
                .iter()
                .map(|(node, since)| {
                    let view = match since {
                        Some(since) => CandidateView {
                            live: true,
                            live_for: self.now - *since,
                        },
                        None => CandidateView {
                            live: false,
                            live_for: Duration::ZERO,
                        },
                    };
                    (*node, view)
                })
                .collect()
        }
    }

    /// Applies the decision, if any; returns the primary afterwards.
    fn step(config: &GroupConfig, state: &mut GroupState, clock: &Clock) -> Option<NodeId> {
        if let Some(change) = decide(config, state, &voters(&[1, 2, 3]), &clock.views()) {
            state.apply(change.primary, clock.now.as_millis() as u64, change.reason);
        }
        state.primary
    }

    fn cooldown(secs: u64) -> GroupConfig {
        GroupConfig {
            cooldown_ms: Some(secs * 1000),
            ..GroupConfig::default()
        }
    }

    #[test]
    fn a_successor_waits_the_lease_and_the_handover() {
        let lease = 3 * SECOND;
        assert_eq!(start_delay(1, lease, 10 * SECOND), Duration::ZERO);
        assert_eq!(start_delay(2, lease, 10 * SECOND), 13 * SECOND);
        assert_eq!(GroupConfig::default().handover(), HANDOVER_DEFAULT);
    }

    #[test]
    fn bootstrap_elects_the_lowest_live_id_at_once() {
        let config = cooldown(120);
        let mut state = GroupState::default();
        let clock = Clock::new(&[2, 3, 1]);
        assert_eq!(step(&config, &mut state, &clock), Some(1));
        assert_eq!(state.term, 1);
        assert_eq!(
            step(&config, &mut state, &clock),
            Some(1),
            "a stable view changes nothing"
        );
        assert_eq!(state.term, 1);
    }

    #[test]
    fn a_dead_incumbent_is_replaced_without_waiting() {
        let config = cooldown(120);
        let mut state = GroupState::default();
        let mut clock = Clock::new(&[1, 2, 3]);
        step(&config, &mut state, &clock);
        clock.advance(SECOND);
        clock.down(1);
        assert_eq!(step(&config, &mut state, &clock), Some(2));
        assert_eq!(state.term, 2);
    }

    #[test]
    fn a_returning_better_candidate_waits_the_cooldown() {
        let config = cooldown(120);
        let mut state = GroupState::default();
        let mut clock = Clock::new(&[1, 2, 3]);
        step(&config, &mut state, &clock);
        clock.down(1);
        step(&config, &mut state, &clock);
        assert_eq!(state.primary, Some(2));
        clock.advance(10 * SECOND);
        clock.up(1);
        clock.advance(119 * SECOND);
        assert_eq!(
            step(&config, &mut state, &clock),
            Some(2),
            "1 s short of the cooldown"
        );
        clock.advance(SECOND);
        assert_eq!(
            step(&config, &mut state, &clock),
            Some(1),
            "after the cooldown it takes the role back"
        );
        assert_eq!(state.term, 3);
    }

    #[test]
    fn a_flap_restarts_the_cooldown() {
        let config = cooldown(120);
        let mut state = GroupState::default();
        let mut clock = Clock::new(&[1, 2, 3]);
        step(&config, &mut state, &clock);
        clock.down(1);
        step(&config, &mut state, &clock);
        clock.up(1);
        clock.advance(100 * SECOND);
        clock.down(1); // flap
        step(&config, &mut state, &clock);
        clock.advance(SECOND);
        clock.up(1);
        clock.advance(100 * SECOND);
        assert_eq!(
            step(&config, &mut state, &clock),
            Some(2),
            "the timer restarted at the flap"
        );
        clock.advance(20 * SECOND);
        assert_eq!(step(&config, &mut state, &clock), Some(1));
    }

    #[test]
    fn quorum_regained_from_nobody_elects_without_cooldown() {
        let config = cooldown(3600);
        let mut state = GroupState::default();
        let mut clock = Clock::new(&[1, 2, 3]);
        step(&config, &mut state, &clock);
        for node in [1, 2, 3] {
            clock.down(node);
        }
        assert_eq!(
            step(&config, &mut state, &clock),
            None,
            "nobody is live: no primary"
        );
        assert_eq!(state.term, 2, "a change to nobody is a new term");
        clock.advance(SECOND);
        clock.up(2);
        clock.up(1);
        assert_eq!(
            step(&config, &mut state, &clock),
            Some(1),
            "no incumbent: no cooldown"
        );
        assert_eq!(state.term, 3);
    }

    #[test]
    fn priorities_order_candidates_before_ids() {
        let mut config = cooldown(0);
        config.priorities = [(3, -5), (1, 10)].into_iter().collect();
        let mut state = GroupState::default();
        let clock = Clock::new(&[1, 2, 3]);
        assert_eq!(step(&config, &mut state, &clock), Some(3));
        assert_eq!(config.rank(2), (2, 2), "no priority: ranked by id");
    }

    #[test]
    fn only_listed_candidates_are_elected() {
        let mut config = cooldown(120);
        config.candidates = Some(vec![2, 3]);
        let mut state = GroupState::default();
        let mut clock = Clock::new(&[1, 2, 3]);
        assert_eq!(step(&config, &mut state, &clock), Some(2));
        clock.down(2);
        clock.down(3);
        assert_eq!(
            step(&config, &mut state, &clock),
            None,
            "node 1 is live but not a candidate"
        );
        config.candidates = Some(vec![3]);
        clock.up(2);
        clock.up(3);
        step(&config, &mut state, &clock);
        assert_eq!(state.primary, Some(3));
        config.candidates = Some(vec![1]);
        assert_eq!(
            step(&config, &mut state, &clock),
            Some(1),
            "an incumbent removed from the candidates is replaced"
        );
    }
}
