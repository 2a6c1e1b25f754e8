//! Who is alive, as this node sees it: every heartbeat, and every other
//! message from a node, refreshes it; a node is live while it was heard from
//! within `dead_after` and last reported itself healthy. A node that stops
//! being live and comes back starts a new streak (a flap restarts a
//! cooldown).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::rules::CandidateView;
use crate::types::NodeId;

#[derive(Clone, Copy, Debug)]
struct Peer {
    last_heard: Instant,
    healthy: bool,
    /// Start of the current live streak.
    live_since: Option<Instant>,
}

/// The liveness table of one node.
#[derive(Debug)]
pub struct Liveness {
    dead_after: Duration,
    peers: Mutex<HashMap<NodeId, Peer>>,
    /// When this table started filling (the process start).
    started: Instant,
}

impl Liveness {
    pub fn new(dead_after: Duration) -> Liveness {
        Liveness {
            dead_after,
            peers: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Whether the table has been filling for `dead_after`: before that, a
    /// node not heard from yet may simply not have had its turn (a restarted
    /// decider must not depose a live primary it has not heard from yet).
    pub fn informed(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= self.dead_after
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    fn was_live(&self, peer: &Peer, now: Instant) -> bool {
        peer.healthy && now.saturating_duration_since(peer.last_heard) <= self.dead_after
    }

    /// `node` was heard from at `now`, reporting `healthy` (or, for a message
    /// that does not say, `None`: its health is unchanged).
    pub fn heard(&self, node: NodeId, healthy: Option<bool>, now: Instant) {
        let mut peers = self.peers.lock();
        let previous = peers.get(&node).copied();
        let healthy = healthy.or(previous.map(|p| p.healthy)).unwrap_or(false);
        let continuing = previous
            .filter(|p| self.was_live(p, now))
            .and_then(|p| p.live_since);
        let live_since = if healthy {
            Some(continuing.unwrap_or(now))
        } else {
            None
        };
        peers.insert(
            node,
            Peer {
                last_heard: now.max(previous.map_or(now, |p| p.last_heard)),
                healthy,
                live_since,
            },
        );
    }

    /// How the decider sees `node` at `now`.
    pub fn view(&self, node: NodeId, now: Instant) -> CandidateView {
        match self.peers.lock().get(&node) {
            Some(peer) if self.was_live(peer, now) => CandidateView {
                live: true,
                live_for: peer
                    .live_since
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
            },
            _ => CandidateView {
                live: false,
                live_for: Duration::ZERO,
            },
        }
    }

    /// Milliseconds since `node` was last heard from.
    pub fn last_heard_ms(&self, node: NodeId, now: Instant) -> Option<u64> {
        self.peers
            .lock()
            .get(&node)
            .map(|p| now.saturating_duration_since(p.last_heard).as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaks_start_on_return_and_end_on_silence_or_ill_health() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let table = Liveness::new(4 * s);
        assert!(!table.view(7, t0).live, "never heard: not live");
        table.heard(7, Some(true), t0);
        table.heard(7, Some(true), t0 + s);
        let view = table.view(7, t0 + 2 * s);
        assert!(view.live);
        assert_eq!(
            view.live_for,
            2 * s,
            "the streak began at the first heartbeat"
        );
        assert!(
            !table.view(7, t0 + 6 * s).live,
            "silent for longer than dead_after"
        );
        table.heard(7, Some(true), t0 + 10 * s);
        assert_eq!(
            table.view(7, t0 + 11 * s).live_for,
            s,
            "a return starts a new streak"
        );
        table.heard(7, None, t0 + 12 * s);
        assert_eq!(
            table.view(7, t0 + 12 * s).live_for,
            2 * s,
            "a message without health keeps the streak"
        );
        table.heard(7, Some(false), t0 + 13 * s);
        assert!(!table.view(7, t0 + 13 * s).live, "unhealthy is not live");
        table.heard(7, Some(true), t0 + 14 * s);
        assert_eq!(
            table.view(7, t0 + 14 * s).live_for,
            Duration::ZERO,
            "recovery starts a new streak"
        );
    }

    #[test]
    fn a_new_table_is_informed_only_after_dead_after() {
        let table = Liveness::new(Duration::from_secs(4));
        let t0 = table.started;
        assert!(!table.informed(t0 + Duration::from_secs(3)));
        assert!(table.informed(t0 + Duration::from_secs(4)));
    }
}
