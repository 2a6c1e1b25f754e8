//! Fault injection for tests, at the network seam: a node can be cut off
//! from its peers (both directions) while it keeps running and keeps
//! answering local clients. Only available when the node was started with
//! `KEEL_FAULT_INJECTION=1`; a production node refuses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The environment variable that enables fault injection.
pub const FAULT_INJECTION_ENV: &str = "KEEL_FAULT_INJECTION";

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    isolated: AtomicBool,
}

/// Shared fault switches of one node.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    state: Arc<State>,
}

impl Faults {
    pub fn from_env() -> Faults {
        Faults {
            state: Arc::new(State {
                enabled: std::env::var(FAULT_INJECTION_ENV).is_ok_and(|v| v == "1"),
                isolated: AtomicBool::new(false),
            }),
        }
    }

    /// Whether peer traffic is cut.
    pub fn isolated(&self) -> bool {
        self.state.isolated.load(Ordering::Relaxed)
    }

    /// Cuts (or restores) peer traffic.
    pub fn set_isolated(&self, isolated: bool) -> Result<(), String> {
        if !self.state.enabled {
            return Err(format!(
                "fault injection is off (start the node with {FAULT_INJECTION_ENV}=1)"
            ));
        }
        self.state.isolated.store(isolated, Ordering::Relaxed);
        tracing::warn!(
            isolated,
            "fault injection: peer traffic {}",
            if isolated { "cut" } else { "restored" }
        );
        Ok(())
    }
}
