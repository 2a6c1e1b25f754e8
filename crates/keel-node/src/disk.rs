//! Disk space: a full file system must never stop Raft or corrupt anything.
//!
//! openraft stops Raft on a node at its first storage error, so the Raft log
//! and the state machine must not meet `ENOSPC` in normal operation. Three
//! defences, outermost first:
//!
//! 1. **Admission** ([`Disk::admit`], a fresh `statvfs` per batch): with
//!    less than the low watermark free (or the node in low-space mode),
//!    client writes are refused before they reach the Raft log (HTTP 507
//!    `disk_full`, "disk full on node N: ..."), and a follower refuses
//!    entries from the leader while it keeps following (see
//!    `server::internal::append`; out of that mode it stores the first
//!    entries of a request that fit, so a follower far behind catches up in
//!    parts). A write too large for the space left does not enter the mode
//!    when more than its resume point is free (it would end again at once).
//!    Reads are never refused.
//! 2. **The reserve**: a preallocated file `D/reserve`. Entering low-space
//!    mode (or meeting `ENOSPC` anywhere) releases it, so that what was
//!    already accepted still has room: entries being applied, flushes,
//!    snapshots (checkpoints), compaction, the Raft log's own small records,
//!    votes, membership and primary decisions (which are never refused).
//! 3. **Reclaim**, on entering low-space mode and every [`RECLAIM_INTERVAL`]
//!    while in it: stale files in `staging/`, a Raft snapshot and a log purge
//!    up to it, checkpoints beyond the newest [`CHECKPOINTS_KEPT_WHEN_LOW`],
//!    then store garbage collection.
//!
//! Low-space mode ends by itself, checked every [`CHECK_INTERVAL`]: once
//! `low watermark + reserve + margin` bytes are free (the margin is a quarter
//! of the watermark, at least [`RESUME_MARGIN_BYTES_MIN`]), the reserve is
//! created again and writes are admitted. The margin is the hysteresis: after
//! the reserve is back, more than the watermark is still free.
//!
//! Invariants:
//! - the reserve is created only outside low-space mode's thresholds, and
//!   durably (allocated, fsynced, renamed into place, directory fsynced): a
//!   crash leaves either no reserve or a whole one, never a partial file
//!   outside `staging/`;
//! - reclaim never drops the newest checkpoint (the current Raft snapshot),
//!   never collects while a snapshot fetch holds the store's GC gate, and
//!   never removes a staging file younger than [`STAGING_STALE_AFTER`] (a
//!   fetch writes its file within its 60 s batch timeout).

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use byte_unit::{Byte, UnitType};
use keel_store::fsutil::{dir_size, fsync_dir, StagingFile};
use keel_store::{Store, StoreError, StoreOptions};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::DiskSettings;
use crate::faults::Faults;
use crate::node::Node;
use crate::types::NodeId;

/// How often the monitor looks at the file system.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A node collects garbage in the background only once it has been ready
/// (caught up and serving) this long. Until then it may be catching up from
/// a snapshot, and the blobs fetched so far, garbage until the snapshot is
/// installed, are what lets a fetch cut short by a restart resume.
pub const COLLECT_READY_FOR: Duration = Duration::from_secs(10);
/// Time between two reclaim passes while space stays low.
pub const RECLAIM_INTERVAL: Duration = Duration::from_secs(30);
/// Checkpoints kept when space is low: the newest (the current Raft
/// snapshot) and one before it, to roll back to.
pub const CHECKPOINTS_KEPT_WHEN_LOW: usize = 2;
/// Staging files untouched this long are leftovers nothing is writing.
pub const STAGING_STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// The smallest hysteresis margin between entering and leaving low-space mode.
pub const RESUME_MARGIN_BYTES_MIN: u64 = 1024 * 1024;
/// A peer's report of low disk space counts for this long (a few
/// heartbeats: a peer that stops reporting is not held against writes).
pub const PEER_REPORT_FRESH: Duration = Duration::from_secs(5);
/// The reserve file, in the data directory.
pub const RESERVE_FILE: &str = "reserve";
/// Bytes written at once when the file system cannot preallocate.
const ZEROS_BYTES: usize = 1024 * 1024;

const _: () = assert!(
    CHECKPOINTS_KEPT_WHEN_LOW >= 1,
    "the newest checkpoint is always kept"
);
const _: () = assert!(
    STAGING_STALE_AFTER.as_secs() > 60,
    "longer than a fetch's batch timeout"
);

/// Free and total bytes of the data directory's file system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Available to this (unprivileged) process.
    pub free: u64,
    pub total: u64,
}

/// A moment something happened, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub what: String,
}

/// What one reclaim pass freed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaimed {
    /// When the pass ended (milliseconds since the Unix epoch).
    pub at_ms: u64,
    pub elapsed_ms: u64,
    pub free_before_bytes: u64,
    pub free_after_bytes: u64,
    pub staging_files_removed: u64,
    pub staging_bytes_removed: u64,
    pub checkpoints_dropped: u64,
    pub log_bytes_before: u64,
    pub log_bytes_after: u64,
    pub gc_bytes_reclaimed: u64,
    /// Steps that failed or were skipped, and why.
    pub problems: Vec<String>,
}

/// What one background garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    /// When it ended (milliseconds since the Unix epoch).
    pub at_ms: u64,
    pub elapsed_ms: u64,
    pub pack_bytes_before: u64,
    pub pack_bytes_after: u64,
    pub segments_compacted: u64,
    /// Why it stopped without collecting, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// This node's disk, as `GET /v1/disk` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub node_id: NodeId,
    /// The data directory.
    pub path: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Bytes in `staging/` (temporary files).
    pub staging_bytes: u64,
    pub low_watermark_bytes: u64,
    /// Client writes and incoming entries are refused.
    pub low_space: bool,
    /// Since when (milliseconds since the Unix epoch).
    pub low_space_since_ms: Option<u64>,
    /// Free bytes at which low-space mode ends.
    pub resume_at_free_bytes: u64,
    pub reserve_bytes: u64,
    pub reserve_present: bool,
    /// The last time a write ran out of space.
    pub last_enospc: Option<DiskEvent>,
    /// The last reclaim pass.
    pub last_reclaim: Option<Reclaimed>,
    /// The last background garbage collection.
    #[serde(default)]
    pub last_collection: Option<Collected>,
    /// A file-system size injected by a test (fault injection only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_limit_bytes: Option<u64>,
    /// Milliseconds since the file system was last measured.
    pub measured_ms_ago: u64,
}

#[derive(Debug)]
struct State {
    space: Space,
    staging_bytes: u64,
    measured: Instant,
    low_since_ms: Option<u64>,
    reserve_present: bool,
    /// An `ENOSPC`, or a refused write, the monitor has not acted on yet:
    /// either enters low-space mode (so reclaim runs) whatever `statvfs`
    /// says.
    enter_low_pending: bool,
    last_enospc: Option<DiskEvent>,
    last_reclaim: Option<Reclaimed>,
    reclaiming: bool,
    reclaim_due: Option<Instant>,
    /// The pack's size after the last background collection.
    collected_at_pack_bytes: u64,
    collecting: bool,
    last_collection: Option<Collected>,
}

struct Inner {
    node_id: NodeId,
    dir: PathBuf,
    settings: DiskSettings,
    faults: Faults,
    state: Mutex<State>,
    /// What peers last said of their disks (primary heartbeats), and when.
    peers_low: Mutex<HashMap<NodeId, (bool, Instant)>>,
    wake: Notify,
}

/// The disk monitor of one node; cheap to clone.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes for people: "41.0 MiB".
pub fn human(bytes: u64) -> String {
    format!(
        "{:.1}",
        Byte::from_u64(bytes).get_appropriate_unit(UnitType::Binary)
    )
}

impl Disk {
    /// A monitor for the data directory `dir`. A reserve file left by an
    /// earlier run counts only if it has the configured size; otherwise it
    /// is removed (and made again when space allows).
    pub fn new(node_id: NodeId, dir: &Path, settings: DiskSettings, faults: Faults) -> Disk {
        let reserve = dir.join(RESERVE_FILE);
        let reserve_len = std::fs::metadata(&reserve).map(|m| m.len()).ok();
        let reserve_present =
            settings.reserve_bytes > 0 && reserve_len == Some(settings.reserve_bytes);
        if reserve_len.is_some() && !reserve_present {
            if let Err(error) = release_reserve(dir) {
                tracing::warn!(%error, "cannot remove a reserve file of the wrong size");
            }
        }
        Disk {
            inner: Arc::new(Inner {
                node_id,
                dir: dir.to_path_buf(),
                settings,
                faults,
                state: Mutex::new(State {
                    space: Space::default(),
                    staging_bytes: 0,
                    measured: Instant::now(),
                    low_since_ms: None,
                    reserve_present,
                    enter_low_pending: false,
                    last_enospc: None,
                    last_reclaim: None,
                    reclaiming: false,
                    reclaim_due: None,
                    collected_at_pack_bytes: 0,
                    collecting: false,
                    last_collection: None,
                }),
                peers_low: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            }),
        }
    }

    /// The file system's space now (or the injected one, see `faults`).
    pub fn measure(&self) -> std::io::Result<Space> {
        let Some(limit) = self.inner.faults.disk_limit() else {
            return statvfs(&self.inner.dir);
        };
        let free = limit.saturating_sub(dir_size(&self.inner.dir));
        if let Some(budget) = self.inner.faults.space_limit() {
            budget.set_remaining(Some(free));
        }
        Ok(Space { free, total: limit })
    }

    /// Free bytes at which low-space mode ends (see the module doc).
    pub fn resume_at(&self) -> u64 {
        let settings = &self.inner.settings;
        let margin = (settings.low_watermark_bytes / 4).max(RESUME_MARGIN_BYTES_MIN);
        settings.low_watermark_bytes + settings.reserve_bytes + margin
    }

    pub fn is_low(&self) -> bool {
        self.inner.state.lock().low_since_ms.is_some()
    }

    /// The state, with the space measured afresh (the last measurement
    /// stays if this one fails).
    fn measured_state(&self) -> parking_lot::MutexGuard<'_, State> {
        let measured = self.measure();
        let mut state = self.inner.state.lock();
        if let Ok(space) = measured {
            state.space = space;
            state.measured = Instant::now();
        }
        state
    }

    /// Whether a write that adds about `bytes` to the disk may go ahead; if
    /// not, the message for the client. Measures the file system afresh.
    pub fn admit(&self, bytes: u64) -> Result<(), String> {
        let mut state = self.measured_state();
        let low = state.low_since_ms.is_some();
        let need = if low {
            self.resume_at()
        } else {
            self.inner.settings.low_watermark_bytes + bytes
        };
        if !low && state.space.free >= need {
            return Ok(());
        }
        if !low && state.space.free < self.resume_at() {
            // Enter low-space mode (release the reserve, reclaim) now, not
            // at the next tick: a write refused for space is low space even
            // with a little more than the watermark free. With enough free
            // to leave that mode again at once, only this write is too
            // large: entering it would flap (release the reserve, re-create
            // it, refuse again) and refuse everything else meanwhile.
            state.enter_low_pending = true;
            self.inner.wake.notify_one();
        }
        Err(format!(
            "disk full on node {}: {} free in {} (writes need {}); writes resume by themselves when space is freed",
            self.inner.node_id,
            human(state.space.free),
            self.inner.dir.display(),
            human(need),
        ))
    }

    /// Bytes a write may add now (measured afresh): what is free above the
    /// low watermark, or nothing in low-space mode.
    pub fn admissible_bytes(&self) -> u64 {
        let state = self.measured_state();
        if state.low_since_ms.is_some() {
            return 0;
        }
        state
            .space
            .free
            .saturating_sub(self.inner.settings.low_watermark_bytes)
    }

    /// Records what peer `node` said of its disk.
    pub fn peer_reported(&self, node: NodeId, low: bool) {
        self.inner
            .peers_low
            .lock()
            .insert(node, (low, Instant::now()));
    }

    /// [`Disk::admit`] on the leader: also refuses when so many `voters`
    /// are low on space (as they said within [`PEER_REPORT_FRESH`]) that the
    /// rest are no majority, since the entry could not commit.
    pub fn admit_cluster(&self, bytes: u64, voters: &[NodeId]) -> Result<(), String> {
        self.admit(bytes)?;
        let low: Vec<NodeId> = {
            let peers = self.inner.peers_low.lock();
            voters
                .iter()
                .copied()
                .filter(|id| {
                    peers
                        .get(id)
                        .is_some_and(|(low, at)| *low && at.elapsed() < PEER_REPORT_FRESH)
                })
                .collect()
        };
        if voters.len() - low.len() > voters.len() / 2 {
            return Ok(());
        }
        let names: Vec<String> = low.iter().map(|id| id.to_string()).collect();
        Err(format!(
            "disk full on node {}: a majority of voters cannot store new entries; \
             writes resume by themselves when space is freed",
            names.join(", node ")
        ))
    }

    /// Makes the monitor check now (after a change it should see at once).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Records that a write met a full disk; the monitor releases the
    /// reserve and enters low-space mode at once.
    pub fn note_enospc(&self, what: impl std::fmt::Display) {
        let what = what.to_string();
        tracing::warn!(%what, "out of disk space");
        {
            let mut state = self.inner.state.lock();
            state.enter_low_pending = true;
            state.last_enospc = Some(DiskEvent {
                at_ms: now_ms(),
                what,
            });
        }
        self.inner.wake.notify_one();
    }

    pub fn status(&self) -> DiskStatus {
        let state = self.inner.state.lock();
        let settings = &self.inner.settings;
        DiskStatus {
            node_id: self.inner.node_id,
            path: self.inner.dir.display().to_string(),
            free_bytes: state.space.free,
            total_bytes: state.space.total,
            staging_bytes: state.staging_bytes,
            low_watermark_bytes: settings.low_watermark_bytes,
            low_space: state.low_since_ms.is_some(),
            low_space_since_ms: state.low_since_ms,
            resume_at_free_bytes: self.resume_at(),
            reserve_bytes: settings.reserve_bytes,
            reserve_present: state.reserve_present,
            last_enospc: state.last_enospc.clone(),
            last_reclaim: state.last_reclaim.clone(),
            last_collection: state.last_collection.clone(),
            injected_limit_bytes: self.inner.faults.disk_limit(),
            measured_ms_ago: state.measured.elapsed().as_millis() as u64,
        }
    }

    /// Measures the file system and moves between normal and low-space
    /// mode, releasing or re-creating the reserve (blocking I/O). Returns
    /// whether a reclaim pass should start now.
    fn check(&self) -> bool {
        let Some(space) = self.refresh() else {
            return false;
        };
        let settings = &self.inner.settings;
        let (entered, release) = {
            let mut state = self.inner.state.lock();
            let pending = std::mem::take(&mut state.enter_low_pending);
            let entered = state.low_since_ms.is_none()
                && (space.free < settings.low_watermark_bytes || pending);
            if entered {
                state.low_since_ms = Some(now_ms());
                state.reclaim_due = Some(Instant::now());
            }
            (
                entered,
                state.low_since_ms.is_some() && state.reserve_present,
            )
        };
        if entered {
            tracing::warn!(
                free = %human(space.free),
                watermark = %human(settings.low_watermark_bytes),
                "disk space low: refusing client writes and entries, releasing the reserve, reclaiming space"
            );
        }
        if release {
            match release_reserve(&self.inner.dir) {
                Ok(()) => self.inner.state.lock().reserve_present = false,
                Err(error) => tracing::error!(%error, "cannot release the disk reserve"),
            }
        }
        self.recover_if_space();
        let mut state = self.inner.state.lock();
        let due = state.reclaim_due.is_some_and(|due| due <= Instant::now());
        if state.low_since_ms.is_some() && due && !state.reclaiming {
            state.reclaiming = true;
            state.reclaim_due = Some(Instant::now() + RECLAIM_INTERVAL);
            return true;
        }
        false
    }

    /// Measures and records the space and the size of `staging/`.
    fn refresh(&self) -> Option<Space> {
        let space = match self.measure() {
            Ok(space) => space,
            Err(error) => {
                tracing::warn!(%error, dir = %self.inner.dir.display(), "cannot measure free disk space");
                return None;
            }
        };
        let staging = dir_size(&self.inner.dir.join(keel_store::datadir::STAGING_DIR));
        let mut state = self.inner.state.lock();
        state.space = space;
        state.staging_bytes = staging;
        state.measured = Instant::now();
        Some(space)
    }

    /// With enough space free again, re-creates the reserve and leaves
    /// low-space mode.
    fn recover_if_space(&self) {
        let Some(space) = self.refresh() else {
            return;
        };
        let settings = &self.inner.settings;
        let (low, present) = {
            let state = self.inner.state.lock();
            (state.low_since_ms.is_some(), state.reserve_present)
        };
        let reserve_wanted = settings.reserve_bytes > 0 && !present;
        if space.free < self.resume_at() || !(low || reserve_wanted) {
            return;
        }
        if reserve_wanted {
            if let Err(error) = create_reserve(&self.inner.dir, settings.reserve_bytes) {
                match error {
                    StoreError::DiskFull { .. } => self.note_enospc(&error),
                    _ => tracing::error!(%error, "cannot create the disk reserve"),
                }
                return;
            }
            self.inner.state.lock().reserve_present = true;
        }
        if low {
            self.inner.state.lock().low_since_ms = None;
            tracing::info!(free = %human(space.free), "disk space recovered: writes are admitted again");
        }
        self.refresh();
    }

    fn finish_reclaim(&self, reclaimed: Reclaimed) {
        let mut state = self.inner.state.lock();
        state.reclaiming = false;
        state.last_reclaim = Some(reclaimed);
    }

    /// Whether a background collection should start, with the pack at
    /// `pack_bytes`: once it grew by `collect_after_bytes` and doubled since
    /// the last one, so that collections cost time in proportion to the
    /// writes and the pack stays within about twice what is live. Never
    /// while space is low (reclaim collects then).
    ///
    /// Replicas write the same bytes, so their packs grow alike: each node
    /// waits for a little more growth than "doubled" (up to 3/8 more, by
    /// its id), so that they do not all collect at the same moment.
    fn start_collection(&self, pack_bytes: u64) -> bool {
        let after = self.inner.settings.collect_after_bytes;
        let mut state = self.inner.state.lock();
        let grown = pack_bytes.saturating_sub(state.collected_at_pack_bytes);
        let stagger_eighths = 8 + self.inner.node_id % 4;
        let due = after > 0
            && grown >= after
            && u128::from(grown) * 8
                >= u128::from(state.collected_at_pack_bytes) * u128::from(stagger_eighths)
            && !state.collecting
            && !state.reclaiming
            && state.low_since_ms.is_none();
        state.collecting |= due;
        due
    }

    /// Records a background collection; `None` when it did not run (a
    /// snapshot fetch holds new blobs), to be tried again at the next check.
    fn finish_collection(&self, collected: Option<Collected>) {
        let mut state = self.inner.state.lock();
        state.collecting = false;
        if let Some(collected) = collected {
            // After a failure too: the next attempt waits for more growth
            // rather than failing again every second.
            state.collected_at_pack_bytes = collected.pack_bytes_after;
            state.last_collection = Some(collected);
        }
    }
}

/// `statvfs(2)` of `path`: space available to unprivileged writers.
fn statvfs(path: &Path) -> std::io::Result<Space> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is NUL-terminated and `stats` is writable memory of
    // the type statvfs fills.
    if unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it initialised the struct.
    let stats = unsafe { stats.assume_init() };
    Ok(Space {
        free: stats.f_bavail.saturating_mul(stats.f_frsize),
        total: stats.f_blocks.saturating_mul(stats.f_frsize),
    })
}

/// Writes `D/reserve` of `bytes` durably: allocated in `staging/`, fsynced,
/// renamed into place, directory fsynced. A failure leaves no reserve.
fn create_reserve(dir: &Path, bytes: u64) -> Result<(), StoreError> {
    let staging = dir.join(keel_store::datadir::STAGING_DIR);
    let mut file = StagingFile::create(&staging, RESERVE_FILE)?;
    let path = file.path().to_path_buf();
    let len = libc::off_t::try_from(bytes).map_err(|_| StoreError::TooLarge {
        what: "disk reserve",
        size: bytes,
        limit: libc::off_t::MAX as u64,
    })?;
    // SAFETY: the descriptor belongs to the open staging file.
    if unsafe { libc::fallocate(file.file().as_raw_fd(), 0, 0, len) } != 0 {
        let error = std::io::Error::last_os_error();
        let unsupported = matches!(
            error.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
        );
        if !unsupported {
            return Err(StoreError::io("allocate disk reserve", path, error));
        }
        // No preallocation here: written zeros take the space just as well.
        let zeros = vec![0u8; ZEROS_BYTES];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(ZEROS_BYTES as u64) as usize;
            file.file()
                .write_all(&zeros[..n])
                .map_err(|e| StoreError::io("write disk reserve", &path, e))?;
            left -= n as u64;
        }
    }
    file.persist(&dir.join(RESERVE_FILE))
}

/// Removes `D/reserve` durably (nothing to do when it is absent).
fn release_reserve(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(RESERVE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => fsync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove disk reserve", path, e)),
    }
}

/// Opens the store of a node. A start on a full disk (the store writes its
/// `DIRTY` marker, and recovery may write) releases the reserve and tries
/// once more: that is what the reserve is for.
pub fn open_store(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
    match Store::open(dir, options.clone()) {
        Err(StoreError::DiskFull { .. }) if dir.join(RESERVE_FILE).exists() => {
            tracing::warn!(dir = %dir.display(), "disk full at start: releasing the reserve");
            release_reserve(dir)?;
            Store::open(dir, options)
        }
        other => other,
    }
}

/// Removes files in `staging/` untouched for [`STAGING_STALE_AFTER`];
/// returns how many and their bytes.
fn remove_stale_staging(dir: &Path) -> std::io::Result<(u64, u64)> {
    let staging = dir.join(keel_store::datadir::STAGING_DIR);
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(&staging)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let age = meta.modified()?.elapsed().unwrap_or_default();
        if !meta.is_file() || age < STAGING_STALE_AFTER {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                files += 1;
                bytes += meta.len();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if files > 0 {
        fsync_dir(&staging).map_err(std::io::Error::other)?;
    }
    Ok((files, bytes))
}

/// Drops retained checkpoints beyond the newest [`CHECKPOINTS_KEPT_WHEN_LOW`].
fn drop_old_checkpoints(store: &Store) -> Result<u64, StoreError> {
    let checkpoints = store.checkpoints();
    let excess = checkpoints.len().saturating_sub(CHECKPOINTS_KEPT_WHEN_LOW);
    if excess == 0 {
        return Ok(0);
    }
    let old = checkpoints[..excess].iter().map(|c| c.sequence).collect();
    store.forget_checkpoints(&old)?;
    Ok(excess as u64)
}

impl Node {
    /// The disk monitor.
    pub fn disk(&self) -> &Disk {
        &self.inner.disk
    }

    /// This node's disk: space, reserve, low-space mode, reclaim.
    pub fn disk_status(&self) -> DiskStatus {
        self.inner.disk.status()
    }

    /// Starts the monitor: a check every [`CHECK_INTERVAL`] (or at once
    /// when a write was refused or met a full disk), reclaim passes while
    /// space is low.
    pub(crate) fn spawn_disk_monitor(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut shutdown = node.shutdown_signal();
            let mut ready_since: Option<Instant> = None;
            loop {
                let disk = node.inner.disk.clone();
                match tokio::task::spawn_blocking(move || disk.check()).await {
                    Ok(true) => {
                        let node = node.clone();
                        tokio::spawn(async move {
                            let reclaimed = node.reclaim_space().await;
                            node.inner.disk.finish_reclaim(reclaimed);
                        });
                    }
                    Ok(false) => {}
                    Err(error) => tracing::error!(%error, "disk check failed"),
                }
                ready_since = match node.readiness() {
                    Ok(()) => ready_since.or(Some(Instant::now())),
                    Err(_) => None,
                };
                let settled = ready_since.is_some_and(|since| since.elapsed() >= COLLECT_READY_FOR);
                if settled
                    && node
                        .inner
                        .disk
                        .start_collection(node.inner.store.pack().total_bytes())
                {
                    let node = node.clone();
                    tokio::spawn(async move {
                        let collected = node.collect_garbage().await;
                        node.inner.disk.finish_collection(collected);
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                    _ = node.inner.disk.inner.wake.notified() => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }

    /// A background garbage collection (see [`Disk::start_collection`]);
    /// `None` when a snapshot fetch keeps it from running now.
    async fn collect_garbage(&self) -> Option<Collected> {
        let started = Instant::now();
        let store = self.inner.store.clone();
        let pack_bytes_before = store.pack().total_bytes();
        let outcome = tokio::task::spawn_blocking(move || store.try_gc(false)).await;
        let mut collected = Collected {
            pack_bytes_before,
            ..Collected::default()
        };
        match outcome {
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(report))) => collected.segments_compacted = report.segments_compacted,
            Ok(Err(error)) => collected.error = Some(error.to_string()),
            Err(error) => collected.error = Some(error.to_string()),
        }
        collected.pack_bytes_after = self.inner.store.pack().total_bytes();
        collected.elapsed_ms = started.elapsed().as_millis() as u64;
        collected.at_ms = now_ms();
        match &collected.error {
            None => tracing::info!(?collected, "collected the store's garbage"),
            Some(error) => {
                tracing::warn!(%error, "garbage collection failed; it runs again after more writes")
            }
        }
        Some(collected)
    }

    /// One reclaim pass (see the module doc). Every step is attempted; what
    /// fails is recorded and retried at the next pass.
    async fn reclaim_space(&self) -> Reclaimed {
        let started = Instant::now();
        let disk = self.inner.disk.clone();
        let mut reclaimed = Reclaimed {
            free_before_bytes: disk.measure().map_or(0, |s| s.free),
            log_bytes_before: self.inner.log.bytes(),
            ..Reclaimed::default()
        };
        let dir = self.inner.config.data_dir.clone();
        match tokio::task::spawn_blocking(move || remove_stale_staging(&dir)).await {
            Ok(Ok((files, bytes))) => {
                reclaimed.staging_files_removed = files;
                reclaimed.staging_bytes_removed = bytes;
            }
            Ok(Err(error)) => reclaimed.problems.push(format!("staging: {error}")),
            Err(error) => reclaimed.problems.push(format!("staging: {error}")),
        }
        // The snapshot comes first: it becomes the newest checkpoint, which
        // is kept, and lets the log be purged up to it.
        if let Err(error) = self.snapshot_and_purge().await {
            reclaimed
                .problems
                .push(format!("snapshot and log purge: {error}"));
        }
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || drop_old_checkpoints(&store)).await {
            Ok(Ok(dropped)) => reclaimed.checkpoints_dropped = dropped,
            Ok(Err(error)) => reclaimed.problems.push(format!("checkpoints: {error}")),
            Err(error) => reclaimed.problems.push(format!("checkpoints: {error}")),
        }
        let store = self.inner.store.clone();
        // After a background collection already running: it may have taken
        // its roots before the checkpoints above were dropped.
        match tokio::task::spawn_blocking(move || store.gc_after_running(false)).await {
            Ok(Ok(Some(report))) => reclaimed.gc_bytes_reclaimed = report.bytes_reclaimed,
            Ok(Ok(None)) => reclaimed.problems.push(
                "garbage collection: skipped while a snapshot fetch or an upload holds the store"
                    .into(),
            ),
            Ok(Err(error)) => reclaimed
                .problems
                .push(format!("garbage collection: {error}")),
            Err(error) => reclaimed
                .problems
                .push(format!("garbage collection: {error}")),
        }
        reclaimed.log_bytes_after = self.inner.log.bytes();
        reclaimed.free_after_bytes = disk.measure().map_or(0, |s| s.free);
        reclaimed.elapsed_ms = started.elapsed().as_millis() as u64;
        reclaimed.at_ms = now_ms();
        tracing::info!(?reclaimed, "reclaimed disk space");
        reclaimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Node 4 waits for the pack to double exactly (see the stagger).
    fn disk(collect_after_bytes: u64) -> (tempfile::TempDir, Disk) {
        disk_of(4, collect_after_bytes)
    }

    fn disk_of(node_id: NodeId, collect_after_bytes: u64) -> (tempfile::TempDir, Disk) {
        let dir = tempfile::tempdir().unwrap();
        let settings = DiskSettings {
            collect_after_bytes,
            ..DiskSettings::default()
        };
        let disk = Disk::new(node_id, dir.path(), settings, Faults::default());
        (dir, disk)
    }

    fn collected(pack_bytes_after: u64) -> Option<Collected> {
        Some(Collected {
            pack_bytes_after,
            ..Collected::default()
        })
    }

    #[test]
    fn a_write_too_large_for_the_space_above_the_resume_point_does_not_enter_low_space_mode() {
        let dir = tempfile::tempdir().unwrap();
        let free = statvfs(dir.path()).unwrap().free;
        let settings = DiskSettings {
            low_watermark_bytes: free / 2,
            reserve_bytes: 0,
            ..DiskSettings::default()
        };
        let disk = Disk::new(1, dir.path(), settings, Faults::default());
        assert!(disk.admit(free / 4).is_ok());
        assert!(disk.admit(free).is_err(), "larger than the free space");
        assert!(
            !disk.inner.state.lock().enter_low_pending,
            "low-space mode asked for with more than its resume point free: it would flap"
        );
        let room = disk.admissible_bytes();
        assert!(room > free / 4 && room < free, "{room} of {free}");
        disk.check();
        assert!(!disk.is_low());
        assert!(disk.admit(free / 4).is_ok(), "smaller writes go on");
    }

    #[test]
    fn a_collection_is_due_once_the_pack_grew_enough_and_doubled() {
        let (_dir, disk) = disk(64 * MIB);
        assert!(
            !disk.start_collection(63 * MIB),
            "grown less than the minimum"
        );
        assert!(disk.start_collection(64 * MIB));
        assert!(
            !disk.start_collection(500 * MIB),
            "one collection at a time"
        );
        disk.finish_collection(collected(100 * MIB));
        assert!(!disk.start_collection(199 * MIB), "not doubled yet");
        assert!(disk.start_collection(200 * MIB));
        disk.finish_collection(collected(190 * MIB));
        assert!(!disk.start_collection(379 * MIB));
        assert!(disk.start_collection(380 * MIB));
        // One that could not run (a snapshot fetch) is tried again at once.
        disk.finish_collection(None);
        assert!(disk.start_collection(380 * MIB));
    }

    #[test]
    fn replicas_do_not_all_collect_at_once() {
        let due_at = |node_id| {
            let (_dir, disk) = disk_of(node_id, 64 * MIB);
            assert!(disk.start_collection(64 * MIB));
            disk.finish_collection(collected(800 * MIB));
            (1600..4000)
                .find(|mib| disk.start_collection(mib * MIB))
                .unwrap()
        };
        assert_eq!(
            [4, 1, 2, 3].map(due_at),
            [1600, 1700, 1800, 1900],
            "2, 2 1/8, 2 1/4 and 2 3/8 times the pack after the last one"
        );
    }

    #[test]
    fn no_background_collection_when_disabled_or_space_is_low() {
        let (_dir, off) = disk(0);
        assert!(!off.start_collection(u64::MAX / 2));
        let (_dir, low) = disk(64 * MIB);
        low.inner.state.lock().low_since_ms = Some(1);
        assert!(!low.start_collection(u64::MAX / 2), "reclaim collects then");
    }
}
