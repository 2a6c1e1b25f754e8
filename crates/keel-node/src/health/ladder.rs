//! The escalation ladder: what a node does, step by step, about a problem
//! that does not go away, as a pure function of what it observes, so the
//! steps can be tested on a controllable clock.
//!
//! A *problem* is: not ready (Raft stopped, no leader heard, applying,
//! catching up, ...) or isolated (no peer heard). The steps, each taken once
//! per episode, in this order and each logged:
//!
//! 1. **warn** after `warn_after`;
//! 2. **fence** while isolated for `isolated_after`: the node gives up every
//!    primary role (so `keel run` stops its commands) and refuses
//!    linearizable reads; lifted as soon as a peer is heard again;
//! 3. **nudge** after `nudge_after`, then again with doubling delays up to
//!    `nudge_backoff_max`: reconnect and restart replication (the node
//!    restarts in-process; no data is touched);
//! 4. **rebuild** the Raft log from peers, only with positive evidence: at
//!    least `rebuild_after_nudges` nudges and `rebuild_min_window` with zero
//!    progress, the node itself sound, a peer that is healthy and caught up,
//!    and a quorum of voters other than this node caught up (so dropping
//!    this node's unapplied log tail cannot lose a committed write). The old
//!    log is kept aside until the node is ready again. Without that
//!    evidence the ladder waits and says why: it never deletes anything on
//!    a guess (Flux had to back away from exactly that).
//!
//! When the problem clears, everything is undone (the fence is lifted) and
//! the episode ends.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::HealthSettings;

/// What the node sees at one instant.
#[derive(Clone, Debug)]
pub struct Observation {
    pub now: Instant,
    /// Why the node is not ready, if it is not.
    pub not_ready: Option<String>,
    /// Other members, and how many of them were heard from recently.
    pub peers: usize,
    pub peers_reachable: usize,
    /// When any peer was last heard from (None: never, since start).
    pub last_peer_heard: Option<Instant>,
    /// Grows while the node makes progress (applied index, fetched bytes).
    pub progress: u64,
}

/// Why a rebuild may (or may not) go ahead; gathered only when needed.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// The node's own data directory and store are sound (else: never).
    pub local_sound: Result<(), String>,
    /// A peer that is reachable, ready and caught up.
    pub healthy_peer: Option<u64>,
    /// Voters other than this node that are caught up form a quorum.
    pub quorum_without_me: bool,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Warn(String),
    Fence(String),
    Unfence,
    Nudge {
        attempt: u32,
        reason: String,
    },
    Rebuild {
        peer: u64,
        reason: String,
    },
    /// A rebuild is due but the evidence is missing: wait, delete nothing.
    Withhold(String),
    Recovered(String),
}

/// The ladder's position in the current episode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LadderState {
    /// `normal`, `warned`, `nudging`, `rebuilding` or `waiting`.
    pub step: &'static str,
    pub problem: Option<String>,
    #[serde(skip)]
    pub problem_since: Option<Instant>,
    pub fenced: bool,
    pub warned: bool,
    pub nudges: u32,
    #[serde(skip)]
    pub next_nudge: Option<Instant>,
    /// Nudges since the last sign of progress.
    pub nudges_without_progress: u32,
    #[serde(skip)]
    progress: Option<(u64, Instant)>,
    #[serde(skip)]
    pub last_rebuild: Option<Instant>,
    pub rebuilds: u32,
    /// Why a due rebuild is withheld.
    pub withheld: Option<String>,
    /// When the node began observing (isolation counts from then if no
    /// peer was ever heard).
    #[serde(skip)]
    pub started: Option<Instant>,
    /// When a peer was last heard, across restarts (a restarted node has
    /// not heard anyone yet, which is not isolation).
    #[serde(skip)]
    peer_heard: Option<Instant>,
}

impl LadderState {
    pub fn new(now: Instant) -> LadderState {
        LadderState {
            step: "normal",
            started: Some(now),
            ..LadderState::default()
        }
    }

    /// How long the node has been isolated (no peer heard), if it is.
    fn isolated_for(&mut self, seen: &Observation) -> Option<Duration> {
        self.peer_heard = self.peer_heard.max(seen.last_peer_heard);
        if seen.peers == 0 || seen.peers_reachable > 0 {
            return None;
        }
        let since = self.peer_heard.or(self.started).unwrap_or(seen.now);
        Some(seen.now.saturating_duration_since(since))
    }

    /// Whether a rebuild is due (evidence aside): enough fruitless nudges
    /// over enough time, and not too soon after the last one.
    pub fn rebuild_due(&self, seen: &Observation, settings: &HealthSettings) -> bool {
        let stalled_for = self.progress.map_or(Duration::ZERO, |(_, at)| {
            seen.now.saturating_duration_since(at)
        });
        self.problem.is_some()
            && self.nudges_without_progress >= settings.rebuild_after_nudges
            && stalled_for >= Duration::from_millis(settings.rebuild_min_window_ms)
            && self.last_rebuild.is_none_or(|at| {
                seen.now.saturating_duration_since(at)
                    >= Duration::from_millis(settings.rebuild_min_interval_ms)
            })
    }

    /// One step of the ladder. `evidence` is asked for only when a rebuild
    /// is due.
    pub fn step(
        &mut self,
        seen: &Observation,
        settings: &HealthSettings,
        evidence: impl FnOnce() -> Evidence,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let isolated_for = self.isolated_for(seen);
        let isolated =
            isolated_for.is_some_and(|d| d >= Duration::from_millis(settings.isolated_after_ms));
        let problem = match (&seen.not_ready, isolated_for) {
            (_, Some(d)) if isolated => Some(format!(
                "isolated: no peer heard for {}",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            )),
            (Some(reason), _) => Some(reason.clone()),
            (None, _) => None,
        };
        let Some(problem) = problem else {
            // A problem that cleared before the ladder did anything is noise.
            if self.problem.is_some() && (self.warned || self.nudges > 0) {
                if self.fenced {
                    actions.push(Action::Unfence);
                }
                actions.push(Action::Recovered(format!(
                    "recovered after {}: {}",
                    humantime::format_duration(Duration::from_secs(
                        self.problem_since
                            .map_or(0, |s| seen.now.saturating_duration_since(s).as_secs())
                    )),
                    self.problem.as_deref().unwrap_or_default()
                )));
            }
            let (rebuilds, last_rebuild, started, peer_heard) = (
                self.rebuilds,
                self.last_rebuild,
                self.started,
                self.peer_heard,
            );
            *self = LadderState {
                rebuilds,
                last_rebuild,
                started,
                peer_heard,
                ..LadderState::new(seen.now)
            };
            return actions;
        };
        let since = *self.problem_since.get_or_insert(seen.now);
        self.problem = Some(problem.clone());
        match self.progress {
            Some((marker, _)) if marker == seen.progress => {}
            _ => {
                if self.progress.is_some() {
                    self.nudges_without_progress = 0;
                }
                self.progress = Some((seen.progress, seen.now));
            }
        }
        let lasting = seen.now.saturating_duration_since(since);
        if !self.warned && lasting >= Duration::from_millis(settings.warn_after_ms) {
            self.warned = true;
            self.step = "warned";
            actions.push(Action::Warn(problem.clone()));
        }
        if isolated && self.warned && !self.fenced {
            self.fenced = true;
            actions.push(Action::Fence(problem.clone()));
        } else if !isolated && self.fenced {
            self.fenced = false;
            actions.push(Action::Unfence);
        }
        if self.rebuild_due(seen, settings) {
            let evidence = if isolated {
                Evidence {
                    local_sound: Err("isolated".into()),
                    healthy_peer: None,
                    quorum_without_me: false,
                }
            } else {
                evidence()
            };
            let refusal = match (&evidence.local_sound, evidence.healthy_peer) {
                _ if isolated => Some("no peer is reachable".to_string()),
                (Err(reason), _) => Some(format!("this node is not sound: {reason}")),
                (Ok(()), None) => Some("no peer is healthy and caught up".to_string()),
                (Ok(()), Some(_)) if !evidence.quorum_without_me => Some(
                    "the other caught-up voters are not a quorum: this node's log may hold the only other copy of committed entries"
                        .to_string(),
                ),
                _ => None,
            };
            match (refusal, evidence.healthy_peer) {
                (None, Some(peer)) => {
                    self.step = "rebuilding";
                    self.withheld = None;
                    self.last_rebuild = Some(seen.now);
                    self.rebuilds += 1;
                    self.nudges_without_progress = 0;
                    actions.push(Action::Rebuild {
                        peer,
                        reason: problem.clone(),
                    });
                    return actions;
                }
                (refusal, _) => {
                    let reason = format!(
                        "rebuild withheld, waiting and deleting nothing: {}",
                        refusal.unwrap_or_default()
                    );
                    if self.withheld.as_deref() != Some(reason.as_str()) {
                        self.withheld = Some(reason.clone());
                        actions.push(Action::Withhold(reason));
                    }
                    self.step = "waiting";
                }
            }
        }
        if lasting >= Duration::from_millis(settings.nudge_after_ms)
            && self.next_nudge.is_none_or(|at| seen.now >= at)
        {
            self.nudges += 1;
            self.nudges_without_progress += 1;
            let delay = Duration::from_millis(settings.nudge_after_ms)
                .saturating_mul(1 << self.nudges.min(16))
                .min(Duration::from_millis(settings.nudge_backoff_max_ms));
            self.next_nudge = Some(seen.now + delay);
            if self.withheld.is_none() {
                self.step = "nudging";
            }
            actions.push(Action::Nudge {
                attempt: self.nudges,
                reason: problem,
            });
        }
        actions
    }
}

/// A [`LadderState`] that can cross an exec (instants as milliseconds
/// before the moment of export; negative for instants still to come).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct LadderExport {
    step: String,
    problem: Option<String>,
    problem_since_ago_ms: Option<i64>,
    fenced: bool,
    warned: bool,
    nudges: u32,
    next_nudge_ago_ms: Option<i64>,
    nudges_without_progress: u32,
    progress: Option<(u64, i64)>,
    last_rebuild_ago_ms: Option<i64>,
    rebuilds: u32,
    withheld: Option<String>,
    started_ago_ms: Option<i64>,
    peer_heard_ago_ms: Option<i64>,
}

fn ago(now: Instant, at: Instant) -> i64 {
    if at <= now {
        now.duration_since(at).as_millis() as i64
    } else {
        -(at.duration_since(now).as_millis() as i64)
    }
}

fn at(now: Instant, ago_ms: i64) -> Instant {
    if ago_ms >= 0 {
        now.checked_sub(Duration::from_millis(ago_ms as u64))
            .unwrap_or(now)
    } else {
        now + Duration::from_millis(ago_ms.unsigned_abs())
    }
}

/// The steps a ladder can be at (exports carry the name).
const STEPS: [&str; 5] = ["normal", "warned", "nudging", "waiting", "rebuilding"];

impl LadderState {
    pub fn export(&self, now: Instant) -> LadderExport {
        LadderExport {
            step: self.step.to_string(),
            problem: self.problem.clone(),
            problem_since_ago_ms: self.problem_since.map(|t| ago(now, t)),
            fenced: self.fenced,
            warned: self.warned,
            nudges: self.nudges,
            next_nudge_ago_ms: self.next_nudge.map(|t| ago(now, t)),
            nudges_without_progress: self.nudges_without_progress,
            progress: self.progress.map(|(marker, t)| (marker, ago(now, t))),
            last_rebuild_ago_ms: self.last_rebuild.map(|t| ago(now, t)),
            rebuilds: self.rebuilds,
            withheld: self.withheld.clone(),
            started_ago_ms: self.started.map(|t| ago(now, t)),
            peer_heard_ago_ms: self.peer_heard.map(|t| ago(now, t)),
        }
    }

    pub fn import(export: &LadderExport, now: Instant) -> LadderState {
        LadderState {
            step: STEPS
                .into_iter()
                .find(|s| *s == export.step)
                .unwrap_or("normal"),
            problem: export.problem.clone(),
            problem_since: export.problem_since_ago_ms.map(|a| at(now, a)),
            fenced: export.fenced,
            warned: export.warned,
            nudges: export.nudges,
            next_nudge: export.next_nudge_ago_ms.map(|a| at(now, a)),
            nudges_without_progress: export.nudges_without_progress,
            progress: export.progress.map(|(marker, a)| (marker, at(now, a))),
            last_rebuild: export.last_rebuild_ago_ms.map(|a| at(now, a)),
            rebuilds: export.rebuilds,
            withheld: export.withheld.clone(),
            started: export.started_ago_ms.map(|a| at(now, a)),
            peer_heard: export.peer_heard_ago_ms.map(|a| at(now, a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn settings() -> HealthSettings {
        HealthSettings {
            warn_after_ms: 10_000,
            isolated_after_ms: 10_000,
            nudge_after_ms: 30_000,
            nudge_backoff_max_ms: 120_000,
            rebuild_after_nudges: 3,
            rebuild_min_window_ms: 300_000,
            rebuild_min_interval_ms: 3_600_000,
            ..HealthSettings::default()
        }
    }

    struct Sim {
        t0: Instant,
        now: Duration,
        ladder: LadderState,
        seen: Observation,
        log: Vec<(u64, Action)>,
    }

    impl Sim {
        fn new() -> Sim {
            let t0 = Instant::now();
            Sim {
                t0,
                now: Duration::ZERO,
                ladder: LadderState::new(t0),
                seen: Observation {
                    now: t0,
                    not_ready: None,
                    peers: 2,
                    peers_reachable: 2,
                    last_peer_heard: Some(t0),
                    progress: 0,
                },
                log: Vec::new(),
            }
        }

        /// Advances second by second, stepping the ladder each time.
        fn run(&mut self, secs: u64, evidence: &Evidence) {
            for _ in 0..secs {
                self.now += S;
                self.seen.now = self.t0 + self.now;
                if self.seen.peers_reachable > 0 {
                    self.seen.last_peer_heard = Some(self.seen.now);
                }
                let actions = self
                    .ladder
                    .step(&self.seen, &settings(), || evidence.clone());
                self.log
                    .extend(actions.into_iter().map(|a| (self.now.as_secs(), a)));
            }
        }

        fn kinds(&self) -> Vec<&'static str> {
            self.log
                .iter()
                .map(|(_, a)| match a {
                    Action::Warn(_) => "warn",
                    Action::Fence(_) => "fence",
                    Action::Unfence => "unfence",
                    Action::Nudge { .. } => "nudge",
                    Action::Rebuild { .. } => "rebuild",
                    Action::Withhold(_) => "withhold",
                    Action::Recovered(_) => "recovered",
                })
                .collect()
        }
    }

    fn good_evidence() -> Evidence {
        Evidence {
            local_sound: Ok(()),
            healthy_peer: Some(2),
            quorum_without_me: true,
        }
    }

    #[test]
    fn the_ladder_survives_an_export_and_import() {
        let mut sim = Sim::new();
        sim.seen.not_ready = Some("Raft stopped".into());
        sim.run(100, &good_evidence());
        let now = sim.seen.now;
        let json = serde_json::to_string(&sim.ladder.export(now)).unwrap();
        let back = LadderState::import(&serde_json::from_str(&json).unwrap(), now);
        assert_eq!(back.export(now).nudges, sim.ladder.nudges);
        assert_eq!(
            format!("{:?}", back.export(now)),
            format!("{:?}", sim.ladder.export(now))
        );
        sim.ladder = back;
        sim.run(400, &good_evidence());
        assert!(sim.kinds().contains(&"rebuild"), "the episode went on");
    }

    #[test]
    fn a_restart_that_has_not_heard_peers_yet_is_not_isolation() {
        let mut sim = Sim::new();
        sim.run(60, &good_evidence());
        // A new incarnation: its liveness table is empty for a moment.
        let now = sim.seen.now;
        sim.ladder = LadderState::import(&sim.ladder.export(now), now);
        sim.seen.peers_reachable = 0;
        sim.seen.last_peer_heard = None;
        sim.run(1, &good_evidence());
        assert_eq!(sim.ladder.problem, None, "peers were heard a second ago");
        assert!(sim.log.is_empty(), "{:?}", sim.kinds());
    }

    #[test]
    fn a_healthy_node_does_nothing() {
        let mut sim = Sim::new();
        sim.run(3600, &good_evidence());
        assert!(sim.log.is_empty());
    }

    #[test]
    fn isolation_walks_warn_fence_nudges_never_rebuilds_and_undoes_on_return() {
        let mut sim = Sim::new();
        sim.seen.peers_reachable = 0;
        sim.seen.not_ready = Some("leader 1 not heard from recently".into());
        sim.run(1200, &good_evidence());
        let kinds = sim.kinds();
        assert_eq!(&kinds[..3], ["warn", "fence", "nudge"], "{kinds:?}");
        assert!(kinds.iter().filter(|k| **k == "nudge").count() >= 5);
        assert!(
            !kinds.contains(&"rebuild"),
            "never without a reachable peer"
        );
        assert!(kinds.contains(&"withhold"));
        let fence_at = sim
            .log
            .iter()
            .find(|(_, a)| matches!(a, Action::Fence(_)))
            .unwrap()
            .0;
        assert_eq!(
            fence_at, 11,
            "fenced once isolated_after passed and it warned"
        );
        let nudges: Vec<u64> = sim
            .log
            .iter()
            .filter(|(_, a)| matches!(a, Action::Nudge { .. }))
            .map(|(t, _)| *t)
            .collect();
        let gaps: Vec<u64> = nudges.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.windows(2).all(|g| g[1] >= g[0]),
            "backoff grows: {gaps:?}"
        );
        assert!(gaps.iter().all(|g| *g <= 120), "capped: {gaps:?}");
        sim.log.clear();
        sim.seen.peers_reachable = 2;
        sim.seen.not_ready = None;
        sim.run(5, &good_evidence());
        assert_eq!(sim.kinds(), ["unfence", "recovered"]);
        assert_eq!(sim.ladder.step, "normal");
        assert!(!sim.ladder.fenced);
    }

    #[test]
    fn a_stall_with_healthy_peers_rebuilds_only_after_enough_fruitless_nudges() {
        let mut sim = Sim::new();
        sim.seen.not_ready = Some("Raft stopped: storage error".into());
        sim.run(299, &good_evidence());
        assert!(!sim.kinds().contains(&"rebuild"), "{:?}", sim.kinds());
        sim.run(200, &good_evidence());
        let kinds = sim.kinds();
        assert_eq!(&kinds[..2], ["warn", "nudge"]);
        assert_eq!(
            kinds.iter().filter(|k| **k == "rebuild").count(),
            1,
            "{kinds:?}"
        );
        let rebuild_at = sim
            .log
            .iter()
            .find(|(_, a)| matches!(a, Action::Rebuild { .. }))
            .unwrap()
            .0;
        assert!(rebuild_at >= 300, "not before the window: {rebuild_at}");
        assert!(!kinds.contains(&"fence"), "not isolated: keeps its roles");
    }

    #[test]
    fn progress_restarts_the_count_of_fruitless_nudges() {
        let mut sim = Sim::new();
        sim.seen.not_ready = Some("applying: 10 of 90000".into());
        for _ in 0..100 {
            sim.seen.progress += 1;
            sim.run(10, &good_evidence());
        }
        assert!(!sim.kinds().contains(&"rebuild"), "progress is not a stall");
    }

    #[test]
    fn no_rebuild_without_a_quorum_of_others_or_when_the_node_is_unsound() {
        for evidence in [
            Evidence {
                quorum_without_me: false,
                ..good_evidence()
            },
            Evidence {
                local_sound: Err("data directory replaced".into()),
                ..good_evidence()
            },
            Evidence {
                healthy_peer: None,
                ..good_evidence()
            },
        ] {
            let mut sim = Sim::new();
            sim.seen.not_ready = Some("Raft stopped".into());
            sim.run(3600, &evidence);
            let kinds = sim.kinds();
            assert!(!kinds.contains(&"rebuild"), "{evidence:?}: {kinds:?}");
            assert_eq!(
                kinds.iter().filter(|k| **k == "withhold").count(),
                1,
                "said once"
            );
            assert_eq!(sim.ladder.step, "waiting");
        }
    }

    #[test]
    fn at_most_one_rebuild_per_interval() {
        let mut sim = Sim::new();
        sim.seen.not_ready = Some("Raft stopped".into());
        sim.run(3000, &good_evidence());
        assert_eq!(sim.kinds().iter().filter(|k| **k == "rebuild").count(), 1);
        sim.run(1000, &good_evidence());
        assert_eq!(sim.kinds().iter().filter(|k| **k == "rebuild").count(), 2);
    }
}
