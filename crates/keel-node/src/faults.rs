//! Fault injection for tests, at two seams:
//! - the network: a node can be cut off from its peers (both directions)
//!   while it keeps running and keeps answering local clients. A cut
//!   survives the node's restarts (a marker file in its data directory), as
//!   a real partition would: a node must not heal a partition by restarting
//!   itself;
//! - the disk: a node can be told its data directory lives on a file system
//!   of a given size. The disk monitor then reports that size (minus what
//!   the directory holds) as the free space, and appends to the pack, the
//!   checkpoint history and the Raft log fail with `ENOSPC` past it (see
//!   `keel_store::space`). For machines where a test cannot mount a small
//!   file system.
//!
//! Only available when the node was started with `KEEL_FAULT_INJECTION=1`;
//! a production node refuses it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use keel_store::SpaceLimit;

/// The environment variable that enables fault injection.
pub const FAULT_INJECTION_ENV: &str = "KEEL_FAULT_INJECTION";
/// `disk_limit` value meaning "no injected limit".
const NO_DISK_LIMIT: u64 = u64::MAX;

/// Marks, in the data directory, a node that is cut off.
const ISOLATED_MARKER: &str = "fault-isolated";

#[derive(Debug)]
struct State {
    enabled: bool,
    isolated: AtomicBool,
    marker: Option<PathBuf>,
    /// Injected file-system size in bytes, or [`NO_DISK_LIMIT`].
    disk_limit: AtomicU64,
    /// The append budget that enforces `disk_limit` (kept by the disk monitor).
    space: Arc<SpaceLimit>,
}

impl Default for State {
    fn default() -> State {
        State {
            enabled: false,
            isolated: AtomicBool::new(false),
            marker: None,
            disk_limit: AtomicU64::new(NO_DISK_LIMIT),
            space: Arc::new(SpaceLimit::default()),
        }
    }
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
                ..State::default()
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

    fn check_enabled(&self) -> Result<(), String> {
        if !self.state.enabled {
            return Err(format!(
                "fault injection is off (start the node with {FAULT_INJECTION_ENV}=1)"
            ));
        }
        Ok(())
    }

    /// Cuts (or restores) peer traffic.
    pub fn set_isolated(&self, isolated: bool) -> Result<(), String> {
        self.check_enabled()?;
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

    /// The injected size of the data directory's file system, if any.
    pub fn disk_limit(&self) -> Option<u64> {
        let limit = self.state.disk_limit.load(Ordering::Relaxed);
        (limit != NO_DISK_LIMIT).then_some(limit)
    }

    /// Injects (or, with `None`, removes) a file-system size for the data
    /// directory. The disk monitor applies it at its next check.
    pub fn set_disk_limit(&self, limit: Option<u64>) -> Result<(), String> {
        self.check_enabled()?;
        let value = limit.map_or(NO_DISK_LIMIT, |l| l.min(NO_DISK_LIMIT - 1));
        self.state.disk_limit.store(value, Ordering::Relaxed);
        if limit.is_none() {
            self.state.space.set_remaining(None);
        }
        tracing::warn!(?limit, "fault injection: data directory file system size");
        Ok(())
    }

    /// The append budget that enforces an injected disk limit, for the store
    /// and the Raft log to draw on (`None` without fault injection).
    pub fn space_limit(&self) -> Option<Arc<SpaceLimit>> {
        self.state.enabled.then(|| self.state.space.clone())
    }
}
