//! Fencing against a data directory that goes away while the node runs.
//!
//! An unmounted volume (even a lazy unmount that keeps open files working),
//! a deleted or a replaced data directory must stop this node from
//! acknowledging anything: acks would then be promises about data that is no
//! longer where the node will find it after a restart. The fence remembers
//! the device and inode of the data directory and of its `IDENTITY` file at
//! start, re-checks them at most every [`FENCE_CHECK_INTERVAL`], and once
//! tripped stays tripped until the process restarts.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How stale a successful check may be before the next ack re-checks.
pub const FENCE_CHECK_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    expected: Option<[(u64, u64); 2]>,
    last_ok: Mutex<Instant>,
    tripped: AtomicBool,
    reason: Mutex<Option<String>>,
}

/// A cheap, shared handle; see the module docs.
#[derive(Clone, Debug)]
pub struct Fence {
    inner: Arc<Inner>,
}

fn identify(dir: &Path) -> std::io::Result<[(u64, u64); 2]> {
    let d = std::fs::metadata(dir)?;
    let i = std::fs::metadata(dir.join(keel_store::datadir::IDENTITY_FILE))?;
    Ok([(d.dev(), d.ino()), (i.dev(), i.ino())])
}

impl Fence {
    /// Remembers what `dir` is now.
    pub fn new(dir: &Path) -> std::io::Result<Fence> {
        let expected = identify(dir)?;
        Ok(Fence {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                expected: Some(expected),
                last_ok: Mutex::new(Instant::now()),
                tripped: AtomicBool::new(false),
                reason: Mutex::new(None),
            }),
        })
    }

    /// A fence that never trips (tests of the storage contract only).
    pub fn disabled() -> Fence {
        Fence {
            inner: Arc::new(Inner {
                dir: PathBuf::new(),
                expected: None,
                last_ok: Mutex::new(Instant::now()),
                tripped: AtomicBool::new(false),
                reason: Mutex::new(None),
            }),
        }
    }

    /// `Ok` while the data directory is still the one the node started on.
    pub fn check(&self) -> Result<(), String> {
        let inner = &self.inner;
        if inner.tripped.load(Ordering::Acquire) {
            return Err(self.reason().unwrap_or_default());
        }
        let Some(expected) = inner.expected else {
            return Ok(());
        };
        if inner.last_ok.lock().elapsed() < FENCE_CHECK_INTERVAL {
            return Ok(());
        }
        match identify(&inner.dir) {
            Ok(now) if now == expected => {
                *inner.last_ok.lock() = Instant::now();
                Ok(())
            }
            Ok(_) => Err(self.trip(format!(
                "data directory {} was replaced (another volume or directory is now mounted there)",
                inner.dir.display()
            ))),
            Err(e) => Err(self.trip(format!(
                "data directory {} is gone ({e}); was the volume unmounted?",
                inner.dir.display()
            ))),
        }
    }

    fn trip(&self, reason: String) -> String {
        if !self.inner.tripped.swap(true, Ordering::AcqRel) {
            tracing::error!(%reason, "fencing this node: it stops acknowledging writes and votes");
            *self.inner.reason.lock() = Some(reason.clone());
        }
        self.reason().unwrap_or(reason)
    }

    /// Why the fence tripped, if it did.
    pub fn reason(&self) -> Option<String> {
        self.inner.reason.lock().clone()
    }

    pub fn is_tripped(&self) -> bool {
        self.inner.tripped.load(Ordering::Acquire)
    }
}
