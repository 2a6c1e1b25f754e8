//! The Raft log on disk: `D/raft/NNNNNNNN.wal` segments and two state files.
//!
//! Contract with openraft (storage-v2), kept exactly:
//! - `append` returns once the entries are readable; the flush callback
//!   fires only after an fdatasync made them durable (never before, exactly
//!   once, from a blocking thread);
//! - `save_vote` returns only after the vote is durable;
//! - `purge` durably records the last purged log id *before* any segment
//!   is deleted, so the log never has a hole at its start;
//! - `truncate` and `purge` are durable on return.
//!
//! The committed log id is a WAL record written after the entries it names,
//! so after a crash it can never point past the durable log (the PySyncObj
//! failure: a commit index beyond the journal deadlocked start-up). It is
//! also clamped to the last entry on load, with a warning, in case of damage.
//!
//! Damage is cut, not trusted: recovery stops at the first invalid record
//! (or a break in the index sequence) and removes everything after it; the
//! leader re-sends what this node lacks.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_store::frame;
use keel_store::fsutil::{create_dir_durable, write_atomic};
use keel_store::segment::{Mode, SegmentLog};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::faults::Faults;
use crate::fence::Fence;
use crate::types::{decode, encode, Entry, LogId, StorageError, TypeConfig, Vote};

const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;
const KIND_STATE: u8 = 3;
/// Segments roll once they reach this size.
const WAL_SEGMENT_BYTES_TARGET: u64 = 32 * 1024 * 1024;
/// Zeros written ahead of the active segment's end, so that most appends
/// overwrite blocks the file has and their fdatasync skips the file
/// system's journal (see `keel_store::segment`).
const WAL_PREALLOCATE_BYTES: u64 = 1024 * 1024;
/// Recently appended entries kept decoded in memory (replication reads the tail).
const ENTRY_CACHE_MAX: usize = 4096;
const STATE_FILES: [&str; 2] = ["state.a", "state.b"];
/// Test-only (fault injection): appends to the segment file with the inode
/// named in this file fail, like writes to a bad region of a disk.
const FAULT_BAD_INODE_FILE: &str = "fault-bad-inode";
/// Where a rebuild sets the old log aside (`D/raft.rebuild-<ms>`).
pub const ASIDE_PREFIX: &str = "raft.rebuild-";

/// Durable Raft state other than entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RaftState {
    /// Increases with every write; the newer of the two files wins.
    sequence: u64,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u32,
    /// Offset of the record header.
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct Inner {
    dir: PathBuf,
    staging: PathBuf,
    wal: SegmentLog,
    fence: Fence,
    faults: Faults,
    state: Mutex<State>,
    fsync: Mutex<FsyncStats>,
}

/// How long the log's fsyncs take: what every acknowledgement waits for.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsyncStats {
    pub count: u64,
    pub last_ms: f64,
    /// Exponentially weighted mean (weight 1/16 on the newest).
    pub mean_ms: f64,
    /// The slowest in the last minute.
    pub max_recent_ms: f64,
    #[serde(skip)]
    recent_window: Option<std::time::Instant>,
    pub failures: u64,
    pub last_failure: Option<String>,
}

impl FsyncStats {
    fn record(&mut self, took: std::time::Duration, result: &std::io::Result<()>) {
        let ms = took.as_secs_f64() * 1000.0;
        self.count += 1;
        self.last_ms = ms;
        self.mean_ms = if self.count == 1 {
            ms
        } else {
            self.mean_ms + (ms - self.mean_ms) / 16.0
        };
        let fresh = self
            .recent_window
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(60));
        if !fresh {
            self.recent_window = Some(std::time::Instant::now());
            self.max_recent_ms = 0.0;
        }
        self.max_recent_ms = self.max_recent_ms.max(ms);
        if let Err(error) = result {
            self.failures += 1;
            self.last_failure = Some(error.to_string());
        }
    }
}

struct State {
    durable: RaftState,
    committed: Option<LogId>,
    index: BTreeMap<u64, Location>,
    cache: BTreeMap<u64, Entry>,
}

/// What opening the log found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogRecovery {
    pub entries: usize,
    /// Bytes removed after the first damaged or torn record.
    pub truncated_bytes: u64,
    /// The committed index pointed past the log and was clamped.
    pub committed_clamped: bool,
    /// One of the two state files was damaged (the other was used).
    pub state_file_damaged: bool,
}

/// The Raft log store; clones share one log (a clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn io_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::Logs,
        verb,
        std::io::Error::other(error.to_string()),
    )
}

fn vote_error(error: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::Vote,
        ErrorVerb::Write,
        std::io::Error::other(error.to_string()),
    )
}

impl LogStore {
    /// The id of the last entry in the log (or of the last purged one).
    pub fn last_log_id(&self) -> Option<LogId> {
        let state = self.inner.state.lock();
        state
            .index
            .values()
            .next_back()
            .map(|l| l.log_id)
            .or(state.durable.last_purged)
    }

    /// Opens (creating) the log in `dir`, recovering from torn or damaged
    /// records. Refuses only when both state files are unreadable: the
    /// vote is then unknown and the node must rejoin as a new member.
    pub fn open(
        dir: &Path,
        staging: &Path,
        fence: Fence,
        faults: Faults,
    ) -> anyhow::Result<(LogStore, LogRecovery)> {
        create_dir_durable(dir)?;
        let mut recovery = LogRecovery::default();
        let durable = read_state(dir, &mut recovery)?;
        let wal = SegmentLog::open(dir, "wal", Mode::ReadWrite)?;
        wal.set_preallocation(WAL_PREALLOCATE_BYTES);
        let mut state = State {
            durable,
            committed: None,
            index: BTreeMap::new(),
            cache: BTreeMap::new(),
        };
        load_entries(&wal, &mut state, &mut recovery)?;
        let last = state
            .index
            .values()
            .next_back()
            .map(|l| l.log_id)
            .or(state.durable.last_purged);
        if state.committed > last {
            tracing::warn!(committed = ?state.committed, last = ?last, "committed index pointed past the log; clamped");
            state.committed = last;
            recovery.committed_clamped = true;
        }
        recovery.entries = state.index.len();
        let store = LogStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                staging: staging.to_path_buf(),
                wal,
                fence,
                faults,
                state: Mutex::new(state),
                fsync: Mutex::new(FsyncStats::default()),
            }),
        };
        Ok((store, recovery))
    }

    fn write_state(&self, update: impl FnOnce(&mut RaftState)) -> Result<(), StorageError> {
        self.inner.fence.check().map_err(vote_error)?;
        let mut state = self.inner.state.lock();
        let mut next = state.durable.clone();
        update(&mut next);
        next.sequence += 1;
        let mut bytes = Vec::new();
        frame::encode(KIND_STATE, &encode(&next), &mut bytes);
        let file = STATE_FILES[(next.sequence % 2) as usize];
        write_atomic(&self.inner.staging, &self.inner.dir.join(file), &bytes)
            .map_err(vote_error)?;
        state.durable = next;
        Ok(())
    }

    fn read_entry(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        let location = {
            let state = self.inner.state.lock();
            if let Some(entry) = state.cache.get(&index) {
                return Ok(Some(entry.clone()));
            }
            match state.index.get(&index) {
                Some(location) => *location,
                None => return Ok(None),
            }
        };
        let bytes = self
            .inner
            .wal
            .read_at(location.segment, location.offset, location.len as usize)
            .map_err(|e| io_error(ErrorVerb::Read, e))?
            .ok_or_else(|| io_error(ErrorVerb::Read, format!("log entry {index} vanished")))?;
        let record = frame::record_at(&bytes, 0).ok_or_else(|| {
            io_error(
                ErrorVerb::Read,
                format!("log entry {index} fails its checksum"),
            )
        })?;
        let entry: Entry =
            decode(&bytes[record.payload]).map_err(|e| io_error(ErrorVerb::Read, e))?;
        Ok(Some(entry))
    }

    /// The committed log id most recently recorded.
    pub fn committed(&self) -> Option<LogId> {
        self.inner.state.lock().committed
    }

    /// Makes appends draw on `limit` (fault injection, see `keel_store::space`).
    pub fn set_space_limit(&self, limit: Arc<keel_store::SpaceLimit>) {
        self.inner.wal.set_space_limit(limit);
    }

    /// Bytes in the log's segments.
    pub fn bytes(&self) -> u64 {
        self.inner.wal.total_bytes()
    }

    pub fn fsync_stats(&self) -> FsyncStats {
        self.inner.fsync.lock().clone()
    }

    fn active_inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let active = self.inner.wal.active_id()?;
        std::fs::metadata(self.inner.wal.path_of(active))
            .ok()
            .map(|m| m.ino())
    }

    /// Test-only: makes every later append to the current segment file
    /// fail (it survives restarts; only setting the log aside cures it).
    pub fn inject_bad_segment(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.inner.faults.enabled(),
            "fault injection is off (start the node with {}=1)",
            crate::faults::FAULT_INJECTION_ENV
        );
        let inode = self
            .active_inode()
            .ok_or_else(|| anyhow::anyhow!("the log has no segment yet"))?;
        write_atomic(
            &self.inner.staging,
            &self.inner.dir.join(FAULT_BAD_INODE_FILE),
            inode.to_string().as_bytes(),
        )?;
        Ok(())
    }

    fn injected_failure(&self) -> bool {
        if !self.inner.faults.enabled() {
            return false;
        }
        let Ok(text) = std::fs::read_to_string(self.inner.dir.join(FAULT_BAD_INODE_FILE)) else {
            return false;
        };
        text.trim().parse().ok() == self.active_inode()
    }
}

/// Sets the log's entries aside for a rebuild: every segment moves to
/// `aside` (kept until the node is ready again), the state files (the vote,
/// the purge point) stay. On the next start the log is empty, Raft purges
/// up to what the store has applied, and the leader sends the rest.
/// Call only on a stopped node.
pub fn set_aside(dir: &Path, aside: &Path) -> anyhow::Result<usize> {
    create_dir_durable(aside)?;
    let mut moved = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".wal") {
            std::fs::rename(entry.path(), aside.join(&name))?;
            moved += 1;
        }
    }
    keel_store::fsutil::fsync_dir(aside)?;
    keel_store::fsutil::fsync_dir(dir)?;
    Ok(moved)
}

fn read_state(dir: &Path, recovery: &mut LogRecovery) -> anyhow::Result<RaftState> {
    let mut found = Vec::new();
    let mut damaged = 0;
    for file in STATE_FILES {
        let path = dir.join(file);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("cannot read Raft state {}: {e}", path.display()),
        };
        let parsed = frame::record_at(&bytes, 0)
            .filter(|r| r.kind == KIND_STATE && r.end() as usize == bytes.len())
            .and_then(|r| decode::<RaftState>(&bytes[r.payload]).ok());
        match parsed {
            Some(state) => found.push(state),
            None => damaged += 1,
        }
    }
    recovery.state_file_damaged = damaged > 0;
    if found.is_empty() && damaged > 0 {
        anyhow::bail!(
            "the Raft state (vote) in {} is damaged and no intact copy is left; this node cannot safely \
             vote under its id again: remove it from the cluster (`keel member remove ID`) and rejoin it \
             as a new member with `keel join`",
            dir.display()
        );
    }
    Ok(found
        .into_iter()
        .max_by_key(|s| s.sequence)
        .unwrap_or_default())
}

/// Scans every segment, indexing entries until the first damage or gap in
/// the sequence, and cuts the log there.
fn load_entries(
    wal: &SegmentLog,
    state: &mut State,
    recovery: &mut LogRecovery,
) -> anyhow::Result<()> {
    let purged = state.durable.last_purged.map(|l| l.index);
    let mut expected: Option<u64> = None;
    for segment in wal.segment_ids() {
        let bytes = wal.read_segment(segment)?;
        let scan = frame::scan(&bytes);
        let mut cut = scan.first_damage();
        for record in &scan.records {
            if cut.is_some_and(|c| record.offset >= c) {
                break;
            }
            let payload = &bytes[record.payload.clone()];
            match record.kind {
                KIND_ENTRY => {
                    let Ok(entry) = decode::<Entry>(payload) else {
                        cut = Some(record.offset);
                        break;
                    };
                    let index = entry.log_id.index;
                    if purged.is_some_and(|p| index <= p) {
                        continue;
                    }
                    if expected.is_some_and(|e| e != index) {
                        cut = Some(record.offset);
                        break;
                    }
                    expected = Some(index + 1);
                    let location = Location {
                        segment,
                        offset: record.offset,
                        len: (record.end() - record.offset) as u32,
                        log_id: entry.log_id,
                    };
                    state.index.insert(index, location);
                }
                KIND_COMMITTED => {
                    if let Ok(committed) = decode::<Option<LogId>>(payload) {
                        state.committed = state.committed.max(committed);
                    }
                }
                _ => {}
            }
        }
        if let Some(cut) = cut {
            if bytes[cut as usize..].iter().all(|&b| b == 0) {
                // Zeros written ahead of the end (preallocation): the clean
                // end of the log, not damage. Only the active segment has
                // them; it is cut back so appends continue at the end.
                if wal.active_id() == Some(segment) {
                    wal.truncate_to(segment, cut)?;
                }
                continue;
            }
            recovery.truncated_bytes = bytes.len() as u64 - cut;
            tracing::warn!(
                segment,
                offset = cut,
                "Raft log damaged or torn; cutting it there, the leader re-sends the rest"
            );
            wal.truncate_to(segment, cut)?;
            break;
        }
    }
    Ok(())
}

fn range_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let indexes: Vec<u64> = {
            let state = self.inner.state.lock();
            let (start, end) = range_bounds(&range);
            let empty = match (start, end) {
                (Bound::Included(s), Bound::Excluded(e)) => s >= e,
                (Bound::Included(s), Bound::Included(e)) => s > e,
                _ => false,
            };
            if empty {
                return Ok(Vec::new());
            }
            state.index.range((start, end)).map(|(i, _)| *i).collect()
        };
        let mut entries = Vec::with_capacity(indexes.len());
        for index in indexes {
            match self.read_entry(index)? {
                Some(entry) => entries.push(entry),
                None => break,
            }
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.inner.state.lock();
        let last = state
            .index
            .values()
            .next_back()
            .map(|l| l.log_id)
            .or(state.durable.last_purged);
        Ok(LogState {
            last_purged_log_id: state.durable.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.write_state(|s| s.vote = Some(vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.state.lock().durable.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: it becomes durable with the next append, always after
        // the entries it names.
        let mut bytes = Vec::new();
        frame::encode(KIND_COMMITTED, &encode(&committed), &mut bytes);
        self.inner
            .wal
            .append(&bytes)
            .map_err(|e| io_error(ErrorVerb::Write, e))?;
        self.inner.state.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.state.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut buffer = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        for entry in &entries {
            let start = buffer.len();
            frame::encode(KIND_ENTRY, &encode(entry), &mut buffer);
            records.push((start, buffer.len() - start, entry.log_id));
        }
        if self.injected_failure() {
            return Err(io_error(
                ErrorVerb::Write,
                "injected failure: this log segment is on a bad region",
            ));
        }
        let wal = &self.inner.wal;
        if wal.active_len() > 0 && wal.active_len() + buffer.len() as u64 > WAL_SEGMENT_BYTES_TARGET
        {
            wal.roll().map_err(|e| io_error(ErrorVerb::Write, e))?;
        }
        let (segment, offset) = wal
            .append(&buffer)
            .map_err(|e| io_error(ErrorVerb::Write, e))?;
        {
            let mut state = self.inner.state.lock();
            for ((start, len, log_id), entry) in records.into_iter().zip(entries) {
                let location = Location {
                    segment,
                    offset: offset + start as u64,
                    len: len as u32,
                    log_id,
                };
                state.index.insert(log_id.index, location);
                state.cache.insert(log_id.index, entry);
            }
            while state.cache.len() > ENTRY_CACHE_MAX {
                state.cache.pop_first();
            }
        }
        // Durable before acknowledged; the callback runs exactly once.
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = inner
                .fence
                .check()
                .map_err(std::io::Error::other)
                .and_then(|()| inner.wal.sync().map_err(std::io::Error::other));
            inner.fsync.lock().record(started.elapsed(), &result);
            if let Err(error) = &result {
                tracing::error!(%error, "Raft log flush failed; this node stops acknowledging");
            }
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut state = self.inner.state.lock();
        let Some(location) = state.index.get(&log_id.index).copied() else {
            return Ok(());
        };
        self.inner
            .wal
            .truncate_to(location.segment, location.offset)
            .map_err(|e| io_error(ErrorVerb::Delete, e))?;
        state.index.split_off(&log_id.index);
        state.cache.split_off(&log_id.index);
        if state.committed.is_some_and(|c| c.index >= log_id.index) {
            // Committed entries are never truncated; keep the record honest anyway.
            state.committed = state
                .index
                .values()
                .next_back()
                .map(|l| l.log_id)
                .or(state.durable.last_purged);
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point is durable before anything is deleted.
        self.write_state(|s| s.last_purged = Some(log_id))?;
        let mut state = self.inner.state.lock();
        let kept = state.index.split_off(&(log_id.index + 1));
        let removed = std::mem::replace(&mut state.index, kept);
        let kept_cache = state.cache.split_off(&(log_id.index + 1));
        state.cache = kept_cache;
        let still_used: std::collections::BTreeSet<u32> =
            state.index.values().map(|l| l.segment).collect();
        let active = self.inner.wal.active_id();
        let emptied: std::collections::BTreeSet<u32> = removed
            .values()
            .map(|l| l.segment)
            .filter(|s| !still_used.contains(s))
            .collect();
        for segment in emptied {
            if Some(segment) == active {
                if state.index.is_empty() {
                    self.inner
                        .wal
                        .truncate_to(segment, 0)
                        .map_err(|e| io_error(ErrorVerb::Delete, e))?;
                }
            } else {
                self.inner
                    .wal
                    .remove(segment)
                    .map_err(|e| io_error(ErrorVerb::Delete, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (LogStore, LogRecovery) {
        LogStore::open(
            &dir.join("raft"),
            &dir.join("staging"),
            Fence::disabled(),
            Faults::default(),
        )
        .unwrap()
    }

    /// Appends blank entries `indexes` as records, the way `append` does.
    fn write_entries(log: &LogStore, indexes: std::ops::RangeInclusive<u64>) {
        let mut bytes = Vec::new();
        for index in indexes {
            let entry = Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: openraft::EntryPayload::Blank,
            };
            frame::encode(KIND_ENTRY, &encode(&entry), &mut bytes);
        }
        log.inner.wal.append(&bytes).unwrap();
        log.inner.wal.sync().unwrap();
    }

    fn active_file(log: &LogStore) -> PathBuf {
        log.inner.wal.path_of(log.inner.wal.active_id().unwrap())
    }

    #[test]
    fn zeros_past_the_last_record_are_a_clean_end_and_a_torn_record_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        write_entries(&log, 1..=3);
        let records = log.inner.wal.active_len();
        let path = active_file(&log);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            records + WAL_PREALLOCATE_BYTES,
            "the active segment holds zeros ahead of its records"
        );
        drop(log);

        let (log, recovery) = open(dir.path());
        assert_eq!(recovery.entries, 3);
        assert_eq!(recovery.truncated_bytes, 0, "zeros are no damage");
        assert_eq!(log.inner.wal.active_len(), records);
        write_entries(&log, 4..=4);
        drop(log);

        // A record torn in the middle of the zeros is damage, as before.
        let (log, recovery) = open(dir.path());
        assert_eq!(recovery.entries, 4);
        let end = log.inner.wal.active_len();
        drop(log);
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&frame::RECORD_MAGIC, end).unwrap();
        }
        let (log, recovery) = open(dir.path());
        assert_eq!(recovery.entries, 4);
        assert!(recovery.truncated_bytes > 0, "{recovery:?}");
        assert_eq!(log.inner.wal.active_len(), end);
    }
}
