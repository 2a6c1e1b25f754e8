//! Change events for watchers: a bounded ring of recent events and a
//! broadcast of new ones.
//!
//! A watcher asks for every change from a revision on. If that revision is
//! still in the ring, it gets the backlog and then live events with no gap
//! and no duplicate (both are taken under one lock); if it is older, it is
//! told the history was compacted and must re-read and watch from now.

use std::collections::VecDeque;
use std::sync::Arc;

use keel_store::ChangeEvent;
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Events kept for watchers that start in the past.
pub const WATCH_HISTORY_EVENTS_MAX: usize = 100_000;
/// Batches a slow watcher may fall behind before it is dropped.
const WATCH_CHANNEL_BATCHES: usize = 4096;

struct Ring {
    events: VecDeque<ChangeEvent>,
    /// Every event at or below this revision is no longer available.
    compacted_through: u64,
}

/// Live events, in batches as they were applied.
pub type EventReceiver = broadcast::Receiver<Arc<Vec<ChangeEvent>>>;

/// The event hub of one node.
pub struct EventHub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Vec<ChangeEvent>>>,
}

/// The requested revision is older than the history kept.
#[derive(Debug, thiserror::Error)]
#[error("revision {requested} is compacted (history starts after {compacted_through}); re-read and watch from revision {next}", next = compacted_through + 1)]
pub struct Compacted {
    pub requested: u64,
    pub compacted_through: u64,
}

impl EventHub {
    /// A hub whose history starts after `revision`.
    pub fn new(revision: u64) -> EventHub {
        EventHub {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                compacted_through: revision,
            }),
            tx: broadcast::channel(WATCH_CHANNEL_BATCHES).0,
        }
    }

    /// Records and broadcasts events (in revision order).
    pub fn publish(&self, events: Vec<ChangeEvent>) {
        if events.is_empty() {
            return;
        }
        let mut ring = self.ring.lock();
        ring.events.extend(events.iter().cloned());
        while ring.events.len() > WATCH_HISTORY_EVENTS_MAX {
            let old = ring.events.pop_front().expect("non-empty");
            ring.compacted_through = ring.compacted_through.max(old.revision);
        }
        let _ = self.tx.send(Arc::new(events));
    }

    /// Forgets the history: the state jumped to `revision` (a snapshot was
    /// installed), so older events no longer describe it.
    pub fn reset(&self, revision: u64) {
        let mut ring = self.ring.lock();
        ring.events.clear();
        ring.compacted_through = revision;
    }

    /// Events from `from_revision` on, then live ones.
    pub fn subscribe(
        &self,
        from_revision: u64,
    ) -> Result<(Vec<ChangeEvent>, EventReceiver), Compacted> {
        let ring = self.ring.lock();
        if from_revision <= ring.compacted_through {
            return Err(Compacted {
                requested: from_revision,
                compacted_through: ring.compacted_through,
            });
        }
        let backlog = ring
            .events
            .iter()
            .filter(|e| e.revision >= from_revision)
            .cloned()
            .collect();
        Ok((backlog, self.tx.subscribe()))
    }
}

#[cfg(test)]
mod tests {
    use keel_store::ChangeKind;

    use super::*;

    fn event(revision: u64) -> ChangeEvent {
        ChangeEvent {
            revision,
            kind: ChangeKind::Put,
            key: format!("k{revision}"),
            value: None,
            size: 0,
        }
    }

    #[test]
    fn backlog_then_live_without_gaps() {
        let hub = EventHub::new(10);
        assert!(hub.subscribe(10).is_err(), "history starts after 10");
        hub.publish(vec![event(11), event(12)]);
        let (backlog, mut live) = hub.subscribe(12).unwrap();
        assert_eq!(backlog, vec![event(12)]);
        hub.publish(vec![event(13)]);
        assert_eq!(*live.try_recv().unwrap(), vec![event(13)]);
        hub.reset(20);
        assert!(hub.subscribe(15).is_err());
        assert!(hub.subscribe(21).unwrap().0.is_empty());
    }
}
