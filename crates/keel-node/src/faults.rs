//! Fault injection for tests, at the network seam: a node can be cut off
//! from its peers (both directions) while it keeps running and keeps
//! answering local clients. Only available when the node was started with
//! `KEEL_FAULT_INJECTION=1`; a production node refuses it.
//!
//! A cut survives the node's restarts (a marker file in its data
//! directory), as a real partition would: a node must not heal a partition
//! by restarting itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The environment variable that enables fault injection.
pub const FAULT_INJECTION_ENV: &str = "KEEL_FAULT_INJECTION";

/// Marks, in the data directory, a node that is cut off.
const ISOLATED_MARKER: &str = "fault-isolated";

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    isolated: AtomicBool,
    marker: Option<PathBuf>,
}

/// Shared fault switches of one node.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    state: Arc<State>,
}

impl Faults {
    /// The switches of the node with data directory `dir`: enabled by the
    /// environment, and still cut off if it was when it last stopped.
    pub fn for_node(dir: &Path) -> Faults {
        let enabled = std::env::var(FAULT_INJECTION_ENV).is_ok_and(|v| v == "1");
        let marker = dir.join(ISOLATED_MARKER);
        Faults {
            state: Arc::new(State {
                enabled,
                isolated: AtomicBool::new(enabled && marker.exists()),
                marker: Some(marker),
            }),
        }
    }

    /// Whether fault injection is allowed at all.
    pub fn enabled(&self) -> bool {
        self.state.enabled
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
        if let Some(marker) = &self.state.marker {
            let written = if isolated {
                std::fs::write(marker, b"cut off by fault injection\n")
            } else {
                std::fs::remove_file(marker).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
            };
            written.map_err(|e| format!("cannot record the fault in {}: {e}", marker.display()))?;
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
