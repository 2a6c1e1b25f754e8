//! The pack: every blob and every commit record, in one append-only segment log.
//!
//! A commit appends its new blobs and then one commit record, and makes them
//! durable with a single fdatasync. Recovery reads records in order and
//! accepts a commit record only when every record before it is intact, so a
//! commit whose blobs did not all reach the disk is never taken for the head.
//!
//! Blobs are named by their BLAKE3 hash and verified on every read; the
//! in-memory index maps a hash to where its bytes are. Sealed segments carry a
//! hint file (the segment's index, checksummed) so opening a large store does
//! not re-read every blob; a missing or stale hint is rebuilt by a scan.
//!
//! The pack knows nothing of trees; the store decides what to do when the
//! active segment is damaged (see [`ActiveScan`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::error::{IoContext, Result, StoreError};
use crate::frame::{self, KIND_PADDING};
use crate::fsutil::{fsync_dir, write_atomic};
use crate::hash::{Hash, HASH_BYTES};
use crate::object::{BlobKind, BLOB_BYTES_MAX};
use crate::segment::{Mode, SegmentLog};

/// Record kinds of pack segments.
pub const KIND_BLOB: u8 = 1;
pub const KIND_COMMIT: u8 = 2;
/// Record kind of a hint file's single record.
const KIND_HINT: u8 = 3;
/// "This segment was durable through offset X when this record was written."
/// Damage before X that is followed by such a record cannot be a torn write.
pub const KIND_SYNCED: u8 = 4;
const COMMIT_VERSION: u8 = 1;
const HINT_VERSION: u8 = 1;
/// Segments roll once they reach this size.
pub const SEGMENT_BYTES_TARGET_DEFAULT: u64 = 64 * 1024 * 1024;
const SEGMENT_EXTENSION: &str = "seg";
const HINT_EXTENSION: &str = "hint";
/// Largest commit metadata (opaque to the store; the cluster keeps its Raft state there).
pub const COMMIT_META_BYTES_MAX: usize = 64 * 1024;

/// Where a blob's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    /// File offset of the blob's bytes (after the record header and the hash).
    pub offset: u64,
    pub len: u32,
}

/// The durable statement "the store's head is `root` at `revision`".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub revision: u64,
    pub root: Hash,
    pub timestamp_ms: u64,
    /// Opaque to the store; persisted atomically with the root.
    pub meta: Vec<u8>,
}

impl CommitRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + HASH_BYTES + 8 + 4 + self.meta.len());
        out.push(COMMIT_VERSION);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(self.root.as_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.meta);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<CommitRecord> {
        if bytes.first() != Some(&COMMIT_VERSION) || bytes.len() < 1 + 8 + HASH_BYTES + 8 + 4 {
            return None;
        }
        let revision = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
        let root = Hash::from_slice(&bytes[9..41])?;
        let timestamp_ms = u64::from_le_bytes(bytes[41..49].try_into().ok()?);
        let meta_len = u32::from_le_bytes(bytes[49..53].try_into().ok()?) as usize;
        let meta = bytes.get(53..)?;
        if meta.len() != meta_len || meta_len > COMMIT_META_BYTES_MAX {
            return None;
        }
        Some(CommitRecord {
            revision,
            root,
            timestamp_ms,
            meta: meta.to_vec(),
        })
    }
}

/// Hashes are uniformly distributed already; use their first bytes as the map hash.
#[derive(Default)]
pub struct HashPrefixHasher(u64);

impl Hasher for HashPrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut raw = [0u8; 8];
            raw[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(raw);
        }
    }
}

pub type HashMapByHash<V> = HashMap<Hash, V, BuildHasherDefault<HashPrefixHasher>>;

/// What the scan of the active segment found, for the store to act on.
#[derive(Debug, Default, Clone)]
pub struct ActiveScan {
    pub segment: u32,
    pub file_len: u64,
    /// Damaged ranges followed by valid records.
    pub gaps: Vec<Range<u64>>,
    /// Start of a torn tail (nothing valid after it).
    pub torn_tail: Option<u64>,
    /// Commit records of the active segment with their offsets, in order.
    pub commits: Vec<(u64, CommitRecord)>,
    /// Sync marks: (offset of the mark, offset the segment was durable through).
    pub synced_marks: Vec<(u64, u64)>,
}

impl ActiveScan {
    /// Whether a later mark proves the bytes at `offset` had been fsynced:
    /// damage there is decay of acknowledged data, not a torn write.
    pub fn was_durable(&self, offset: u64) -> bool {
        self.synced_marks
            .iter()
            .any(|&(at, through)| at > offset && through > offset)
    }

    pub fn first_damage(&self) -> Option<u64> {
        let gap = self.gaps.first().map(|g| g.start);
        match (gap, self.torn_tail) {
            (Some(g), Some(t)) => Some(g.min(t)),
            (g, t) => g.or(t),
        }
    }
}

/// What opening the pack found.
#[derive(Debug, Default, Clone)]
pub struct PackRecovery {
    pub segments: usize,
    pub blobs: usize,
    pub hints_rebuilt: usize,
    /// Damaged ranges in sealed segments (their blobs are unreadable).
    pub sealed_gaps: Vec<(u32, Range<u64>)>,
    /// The newest commit record in sealed segments.
    pub sealed_last_commit: Option<CommitRecord>,
    pub active: ActiveScan,
}

#[derive(Debug, Default)]
struct WriterState {
    /// Blobs of the active segment, for its hint when it is sealed.
    active_entries: Vec<(Hash, Location)>,
    /// Newest commit record written or recovered; carried into each new segment.
    last_commit: Option<CommitRecord>,
    last_commit_in_active: Option<CommitRecord>,
    /// Length of the active segment known to be durable.
    synced_len: u64,
    /// The durable length last stated by a sync mark.
    marked_len: u64,
    /// Bumped whenever the active segment is cut back, so that a detached
    /// sync that started before cannot state a length that is gone.
    cuts: u64,
}

/// A set of blobs (and optionally a commit record) to append together.
#[derive(Default)]
pub struct PackBatch {
    buffer: Vec<u8>,
    blobs: Vec<(Hash, usize, u32)>,
    pending: std::collections::HashSet<Hash>,
    has_commit: Option<CommitRecord>,
    /// Write even blobs the pack holds: the held copies are damaged and the
    /// index moves to these new ones.
    replaces: bool,
}

impl PackBatch {
    /// Bytes a flush gathers before it appends them ([`Pack::write_part`]):
    /// a flush of a large tree in one batch grew its buffer by doubling to
    /// hundreds of MiB, and zeroing and copying those pages took most of
    /// the flush's time (and as much memory again).
    pub const PART_BYTES: usize = 8 << 20;

    pub fn new() -> PackBatch {
        PackBatch::default()
    }

    /// A batch whose blobs replace damaged copies already in the pack.
    pub fn replacing() -> PackBatch {
        PackBatch {
            replaces: true,
            ..PackBatch::default()
        }
    }

    /// Queues a blob unless it is already queued (the pack skips blobs it holds).
    pub fn add_blob(&mut self, hash: Hash, bytes: &[u8]) {
        assert!(
            bytes.len() <= BLOB_BYTES_MAX,
            "blob of {} bytes exceeds the limit",
            bytes.len()
        );
        debug_assert_eq!(Hash::of(bytes), hash, "blob queued under the wrong hash");
        if !self.pending.insert(hash) {
            return;
        }
        let start = self.buffer.len();
        frame::encode_parts(KIND_BLOB, &[hash.as_bytes(), bytes], &mut self.buffer);
        let offset_in_batch = start + frame::RECORD_HEADER_BYTES + HASH_BYTES;
        self.blobs.push((hash, offset_in_batch, bytes.len() as u32));
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.pending.contains(hash)
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Empties the batch, keeping its buffer.
    fn clear(&mut self) {
        self.buffer.clear();
        self.blobs.clear();
        self.pending.clear();
        self.has_commit = None;
    }

    fn set_commit(&mut self, commit: &CommitRecord) {
        frame::encode(KIND_COMMIT, &commit.encode(), &mut self.buffer);
        self.has_commit = Some(commit.clone());
    }
}

/// The blob and commit log of one store.
#[derive(Debug)]
pub struct Pack {
    log: SegmentLog,
    staging: PathBuf,
    index: RwLock<HashMapByHash<Location>>,
    writer: Mutex<WriterState>,
    segment_bytes_target: u64,
    /// While a collection runs: every stored blob a write reused instead of
    /// writing it again (see [`Pack::reuse`]).
    reused: Mutex<Option<Vec<(Hash, BlobKind)>>>,
}

impl Pack {
    /// Opens the pack in `dir`, rebuilding the index. Nothing is repaired
    /// here: the caller inspects [`PackRecovery::active`] and then calls
    /// [`Pack::truncate_active`] or [`Pack::pad_gaps`].
    pub fn open(
        dir: &Path,
        staging: &Path,
        mode: Mode,
        segment_bytes_target: u64,
    ) -> Result<(Pack, PackRecovery)> {
        let log = SegmentLog::open(dir, SEGMENT_EXTENSION, mode)?;
        let pack = Pack {
            log,
            staging: staging.to_path_buf(),
            index: RwLock::new(HashMapByHash::default()),
            writer: Mutex::new(WriterState::default()),
            segment_bytes_target,
            reused: Mutex::new(None),
        };
        let recovery = pack.load(mode)?;
        Ok((pack, recovery))
    }

    fn load(&self, mode: Mode) -> Result<PackRecovery> {
        let ids = self.log.segment_ids();
        let mut recovery = PackRecovery {
            segments: ids.len(),
            ..PackRecovery::default()
        };
        let Some((&active, sealed)) = ids.split_last() else {
            return Ok(recovery);
        };
        let mut index = self.index.write();
        for &id in sealed {
            let loaded = match self.read_hint(id)? {
                Some(hint) => hint,
                None => {
                    let scanned = self.scan_segment(id)?;
                    recovery.hints_rebuilt += 1;
                    recovery
                        .sealed_gaps
                        .extend(scanned.gaps.iter().map(|g| (id, g.clone())));
                    let hint = SegmentSummary {
                        segment_len: scanned.file_len,
                        entries: scanned.entries,
                        last_commit: scanned.commits.last().map(|(_, c)| c.clone()),
                    };
                    if mode == Mode::ReadWrite {
                        self.write_hint(id, &hint)?;
                    }
                    hint
                }
            };
            for (hash, location) in &loaded.entries {
                index.insert(*hash, *location);
            }
            if loaded.last_commit.is_some() {
                recovery.sealed_last_commit = loaded.last_commit;
            }
        }
        let scanned = self.scan_segment(active)?;
        let mut writer = self.writer.lock();
        for (hash, location) in &scanned.entries {
            index.insert(*hash, *location);
        }
        writer.active_entries = scanned.entries;
        recovery.active = ActiveScan {
            segment: active,
            file_len: scanned.file_len,
            gaps: scanned.gaps,
            torn_tail: scanned.torn_tail,
            commits: scanned.commits,
            synced_marks: scanned.marks,
        };
        recovery.blobs = index.len();
        Ok(recovery)
    }

    /// Makes appends draw on `limit` (fault injection, see [`crate::space`]).
    pub fn set_space_limit(&self, limit: std::sync::Arc<crate::space::SpaceLimit>) {
        self.log.set_space_limit(limit);
    }

    /// Declares which commit record is the head after recovery, and whether
    /// the active segment already holds it.
    pub fn set_recovered_head(&self, head: Option<CommitRecord>, in_active: bool) {
        let mut writer = self.writer.lock();
        writer.last_commit_in_active = if in_active { head.clone() } else { None };
        writer.last_commit = head;
    }

    /// Makes sure the active segment states the head, so that compacting
    /// any sealed segment can never lose the newest commit record.
    pub fn ensure_head_in_active(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        if writer.last_commit_in_active.is_some() {
            return Ok(());
        }
        let Some(commit) = writer.last_commit.clone() else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        frame::encode(KIND_COMMIT, &commit.encode(), &mut bytes);
        self.log.append(&bytes)?;
        self.sync_locked(&mut writer)?;
        writer.last_commit_in_active = Some(commit);
        Ok(())
    }

    fn scan_segment(&self, id: u32) -> Result<ScannedSegment> {
        let buf = self.log.read_segment(id)?;
        let scan = frame::scan(&buf);
        let mut entries = Vec::new();
        let mut commits = Vec::new();
        let mut marks = Vec::new();
        for record in &scan.records {
            let payload = &buf[record.payload.clone()];
            match record.kind {
                KIND_BLOB
                    if payload.len() >= HASH_BYTES
                        && payload.len() - HASH_BYTES <= BLOB_BYTES_MAX =>
                {
                    let hash = Hash::from_slice(payload).expect("checked length");
                    let location = Location {
                        segment: id,
                        offset: (record.payload.start + HASH_BYTES) as u64,
                        len: (payload.len() - HASH_BYTES) as u32,
                    };
                    entries.push((hash, location));
                }
                KIND_COMMIT => {
                    if let Some(commit) = CommitRecord::decode(payload) {
                        commits.push((record.offset, commit));
                    }
                }
                KIND_SYNCED if payload.len() == 8 => {
                    marks.push((
                        record.offset,
                        u64::from_le_bytes(payload.try_into().expect("8 bytes")),
                    ));
                }
                KIND_PADDING => {}
                other => tracing::warn!(
                    segment = id,
                    offset = record.offset,
                    kind = other,
                    "skipping unknown pack record"
                ),
            }
        }
        Ok(ScannedSegment {
            file_len: buf.len() as u64,
            entries,
            commits,
            marks,
            gaps: scan.gaps,
            torn_tail: scan.torn_tail,
        })
    }

    fn hint_path(&self, id: u32) -> PathBuf {
        self.log.dir().join(format!("{id:08}.{HINT_EXTENSION}"))
    }

    fn read_hint(&self, id: u32) -> Result<Option<SegmentSummary>> {
        let path = self.hint_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read hint", path, e)),
        };
        let segment_len = std::fs::metadata(self.log.path_of(id))
            .context("stat segment", &self.log.path_of(id))?
            .len();
        let summary = frame::record_at(&bytes, 0)
            .filter(|r| r.kind == KIND_HINT && r.end() as usize == bytes.len())
            .and_then(|r| SegmentSummary::decode(id, &bytes[r.payload]))
            .filter(|s| s.segment_len == segment_len);
        if summary.is_none() {
            tracing::warn!(path = %path.display(), "hint file is damaged or stale; rescanning its segment");
        }
        Ok(summary)
    }

    fn write_hint(&self, id: u32, summary: &SegmentSummary) -> Result<()> {
        let mut bytes = Vec::new();
        frame::encode(KIND_HINT, &summary.encode(), &mut bytes);
        write_atomic(&self.staging, &self.hint_path(id), &bytes)
    }

    // ------------------------------------------------------------ reads

    pub fn contains(&self, hash: &Hash) -> bool {
        self.index.read().contains_key(hash)
    }

    /// Whether a blob about to be referenced is stored already, so that the
    /// writer need not write it again. Every writer that skips a stored blob
    /// asks here rather than [`Pack::contains`]: while a collection runs, a
    /// reused blob is recorded, because the collection's mark may have found
    /// it garbage (an older version of a node can come back when a value is
    /// set back), and it must survive (see `Store::gc`).
    pub fn reuse(&self, hash: &Hash, kind: BlobKind) -> bool {
        if !self.contains(hash) {
            return false;
        }
        if let Some(reused) = self.reused.lock().as_mut() {
            reused.push((*hash, kind));
        }
        true
    }

    /// Starts recording reused blobs for a collection.
    pub fn begin_collection(&self) {
        *self.reused.lock() = Some(Vec::new());
    }

    /// The blobs reused since the collection began (or since the last call).
    pub fn take_reused(&self) -> Vec<(Hash, BlobKind)> {
        self.reused
            .lock()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Stops recording reused blobs.
    pub fn end_collection(&self) {
        *self.reused.lock() = None;
    }

    pub fn location(&self, hash: &Hash) -> Option<Location> {
        self.index.read().get(hash).copied()
    }

    /// Reads a blob and verifies it hashes to its name.
    pub fn get(&self, hash: &Hash) -> Result<Bytes> {
        let bytes = self.get_unverified(hash)?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(StoreError::CorruptBlob {
                hash: *hash,
                actual,
            });
        }
        Ok(Bytes::from(bytes))
    }

    /// Reads a blob's stored bytes without verifying them (for repair tools).
    pub fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>> {
        // A concurrent compaction may move the blob between the index lookup
        // and the read; the index is updated before the old segment goes.
        for _ in 0..3 {
            let Some(location) = self.location(hash) else {
                return Err(StoreError::MissingBlob { hash: *hash });
            };
            if let Some(bytes) =
                self.log
                    .read_at(location.segment, location.offset, location.len as usize)?
            {
                return Ok(bytes);
            }
        }
        Err(StoreError::MissingBlob { hash: *hash })
    }

    /// Every blob hash and location (a snapshot of the index).
    pub fn blobs(&self) -> Vec<(Hash, Location)> {
        self.index.read().iter().map(|(h, l)| (*h, *l)).collect()
    }

    pub fn blob_count(&self) -> usize {
        self.index.read().len()
    }

    pub fn segment_ids(&self) -> Vec<u32> {
        self.log.segment_ids()
    }

    pub fn active_segment(&self) -> Option<u32> {
        self.log.active_id()
    }

    pub fn segment_path(&self, id: u32) -> PathBuf {
        self.log.path_of(id)
    }

    pub fn total_bytes(&self) -> u64 {
        self.log.total_bytes()
    }

    /// The newest commit record written or recovered.
    pub fn last_commit(&self) -> Option<CommitRecord> {
        self.writer.lock().last_commit.clone()
    }

    // ------------------------------------------------------------ writes

    /// Appends a batch, optionally ending with a commit record, and makes it
    /// durable when `sync` is set. A commit record is only ever written after
    /// all the blobs it may reference (they are earlier in the same batch or
    /// were appended before).
    pub fn write(
        &self,
        mut batch: PackBatch,
        commit: Option<&CommitRecord>,
        sync: bool,
    ) -> Result<()> {
        self.append(&mut batch, commit, sync)
    }

    /// Appends the blobs of a batch that is still being filled (a part of
    /// a large flush; the commit record comes with the last part) and
    /// empties it. Not synced.
    pub fn write_part(&self, batch: &mut PackBatch) -> Result<()> {
        self.append(batch, None, false)?;
        batch.clear();
        Ok(())
    }

    fn append(
        &self,
        batch: &mut PackBatch,
        commit: Option<&CommitRecord>,
        sync: bool,
    ) -> Result<()> {
        let mut writer = self.writer.lock();
        // Drop blobs the pack already holds (another batch may have written
        // them), unless this batch replaces damaged copies.
        if !batch.replaces && !batch.blobs.is_empty() {
            let index = self.index.read();
            if batch.blobs.iter().any(|(h, _, _)| index.contains_key(h)) {
                drop(index);
                *batch = self.without_known(batch);
            }
        }
        if let Some(commit) = commit {
            batch.set_commit(commit);
        }
        if batch.is_empty() {
            if sync {
                self.sync_locked(&mut writer)?;
            }
            return Ok(());
        }
        self.roll_if_full(&mut writer, batch.buffer.len() as u64)?;
        self.mark_synced(&mut writer)?;
        let (segment, start) = self.log.append(&batch.buffer)?;
        {
            let mut index = self.index.write();
            for (hash, offset_in_batch, len) in &batch.blobs {
                let location = Location {
                    segment,
                    offset: start + *offset_in_batch as u64,
                    len: *len,
                };
                index.insert(*hash, location);
                writer.active_entries.push((*hash, location));
            }
        }
        if let Some(commit) = batch.has_commit.take() {
            writer.last_commit = Some(commit.clone());
            writer.last_commit_in_active = Some(commit);
        }
        if sync {
            self.sync_locked(&mut writer)?;
        }
        Ok(())
    }

    /// States, before new records, how far the segment is durable (only
    /// when that advanced since the last statement).
    fn mark_synced(&self, writer: &mut WriterState) -> Result<()> {
        if writer.synced_len <= writer.marked_len {
            return Ok(());
        }
        let mut mark = Vec::with_capacity(frame::RECORD_HEADER_BYTES + 8);
        frame::encode(KIND_SYNCED, &writer.synced_len.to_le_bytes(), &mut mark);
        self.log.append(&mark)?;
        writer.marked_len = writer.synced_len;
        Ok(())
    }

    fn sync_locked(&self, writer: &mut WriterState) -> Result<()> {
        let len = self.log.active_len();
        self.log.sync()?;
        writer.synced_len = len;
        Ok(())
    }

    fn without_known(&self, batch: &PackBatch) -> PackBatch {
        let index = self.index.read();
        let mut fresh = PackBatch::new();
        for (hash, offset, len) in &batch.blobs {
            if !index.contains_key(hash) {
                fresh.add_blob(*hash, &batch.buffer[*offset..*offset + *len as usize]);
            }
        }
        fresh
    }

    /// Makes what was appended so far durable without holding the pack's
    /// writer during the fdatasync, so that appends go on meanwhile (a
    /// snapshot's checkpoint syncs every flush since the last sync, see
    /// [`crate::PendingCheckpoint`]). A segment sealed since was made
    /// durable when it was sealed.
    pub fn sync_detached(&self) -> Result<()> {
        let cuts = self.writer.lock().cuts;
        let (segment, len) = self.log.sync_detached()?;
        let mut writer = self.writer.lock();
        // A length cut back meanwhile is not durable: it no longer exists.
        if writer.cuts == cuts && self.log.active_id() == Some(segment) {
            writer.synced_len = writer.synced_len.max(len);
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        self.sync_locked(&mut writer)
    }

    fn roll_if_full(&self, writer: &mut WriterState, incoming: u64) -> Result<()> {
        let len = self.log.active_len();
        if len == 0 || len + incoming <= self.segment_bytes_target {
            return Ok(());
        }
        self.roll(writer)
    }

    /// Seals the active segment: durable, hinted, and a new segment that
    /// starts with a copy of the newest commit record.
    ///
    /// On a full disk the hint may be missing (the next open rebuilds it by
    /// scanning) and the new segment may lack the copy of the head (it is
    /// written before any compaction, see [`Pack::ensure_head_in_active`]).
    fn roll(&self, writer: &mut WriterState) -> Result<()> {
        let sealed = self.log.roll()?;
        // From here on the writer's state describes the new segment, even if
        // a step below fails: sync marks must never state a length of the
        // sealed one.
        writer.synced_len = 0;
        writer.marked_len = 0;
        let entries = std::mem::take(&mut writer.active_entries);
        let last_commit = writer.last_commit_in_active.take();
        let summary = SegmentSummary {
            segment_len: std::fs::metadata(self.log.path_of(sealed))
                .context("stat segment", &self.log.path_of(sealed))?
                .len(),
            entries,
            last_commit,
        };
        match self.write_hint(sealed, &summary) {
            Ok(()) => {}
            Err(error @ StoreError::DiskFull { .. }) => {
                tracing::warn!(%error, segment = sealed, "no hint for a sealed segment; the next open scans it");
            }
            Err(error) => return Err(error),
        }
        if let Some(commit) = writer.last_commit.clone() {
            let mut carry = Vec::new();
            frame::encode(KIND_COMMIT, &commit.encode(), &mut carry);
            self.log.append(&carry)?;
            self.sync_locked(writer)?;
            writer.last_commit_in_active = Some(commit);
        }
        Ok(())
    }

    /// Forces a roll (used by compaction and tests).
    pub fn seal_active(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        if self.log.active_len() == 0 {
            return Ok(());
        }
        self.roll(&mut writer)
    }

    // ------------------------------------------------------------ recovery

    /// Cuts the active segment at `offset` (a torn tail or unusable damage),
    /// forgetting the blobs beyond it. When `quarantine` is set the bytes
    /// being cut are first copied to `quarantine_dir` so nothing that might
    /// matter is destroyed.
    pub fn truncate_active(&self, offset: u64, quarantine_dir: Option<&Path>) -> Result<()> {
        let mut writer = self.writer.lock();
        let segment = self.log.active_id().ok_or(StoreError::ReadOnly)?;
        if let Some(dir) = quarantine_dir {
            let bytes = self.log.read_segment(segment)?;
            if (offset as usize) < bytes.len() {
                crate::fsutil::create_dir_durable(dir)?;
                let target = dir.join(format!("pack-{segment:08}-at-{offset}.bin"));
                write_atomic(&self.staging, &target, &bytes[offset as usize..])?;
                tracing::warn!(path = %target.display(), "quarantined damaged pack tail");
            }
        }
        writer.cuts += 1;
        self.log.truncate_to(segment, offset)?;
        writer.synced_len = writer.synced_len.min(offset);
        writer.marked_len = writer.marked_len.min(offset);
        let mut index = self.index.write();
        writer.active_entries.retain(|(hash, location)| {
            let keep = location.offset < offset;
            if !keep && index.get(hash) == Some(location) {
                index.remove(hash);
            }
            keep
        });
        Ok(())
    }

    /// Overwrites damaged ranges of the active segment with padding records
    /// so it parses cleanly again (used when the records after them are
    /// kept). The damaged bytes are first copied to `quarantine_dir`.
    pub fn pad_gaps(&self, gaps: &[Range<u64>], quarantine_dir: &Path) -> Result<()> {
        let segment = self.log.active_id().ok_or(StoreError::ReadOnly)?;
        for gap in gaps {
            if let Some(bytes) =
                self.log
                    .read_at(segment, gap.start, (gap.end - gap.start) as usize)?
            {
                crate::fsutil::create_dir_durable(quarantine_dir)?;
                let name = format!("pack-{segment:08}-gap-{}-{}.bin", gap.start, gap.end);
                write_atomic(&self.staging, &quarantine_dir.join(name), &bytes)?;
            }
            let padding = frame::padding((gap.end - gap.start) as usize);
            self.log.overwrite(segment, gap.start, &padding)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ compaction

    /// The sealed segments (all but the active one), oldest first.
    pub fn sealed_segments(&self) -> Vec<u32> {
        let active = self.log.active_id();
        self.log
            .segment_ids()
            .into_iter()
            .filter(|id| Some(*id) != active)
            .collect()
    }

    /// The blobs the index places in each of `segments` (sealed), with each
    /// segment's size: one pass over the index for a whole collection.
    /// Sealed segments take no new blobs, so each list stays complete while
    /// the collection runs; a blob copied out since is only stale in it.
    pub fn segment_blobs(&self, segments: &[u32]) -> Vec<SegmentBlobs> {
        let active = self.log.active_id();
        let mut found: std::collections::BTreeMap<u32, SegmentBlobs> = segments
            .iter()
            .copied()
            .filter(|id| Some(*id) != active)
            .map(|id| {
                let bytes = std::fs::metadata(self.log.path_of(id))
                    .map(|m| m.len())
                    .unwrap_or(0);
                (
                    id,
                    SegmentBlobs {
                        segment: id,
                        bytes,
                        blobs: Vec::new(),
                    },
                )
            })
            .collect();
        for (hash, location) in self.index.read().iter() {
            if let Some(segment) = found.get_mut(&location.segment) {
                segment.blobs.push((*hash, location.len));
            }
        }
        found.into_values().collect()
    }

    /// The blobs of `segment` in `live` that the index still places there
    /// (not copied out yet).
    pub fn live_blobs(&self, segment: &SegmentBlobs, live: &dyn Fn(&Hash) -> bool) -> Vec<Hash> {
        let index = self.index.read();
        segment
            .blobs
            .iter()
            .map(|(hash, _)| *hash)
            .filter(|hash| {
                live(hash)
                    && index
                        .get(hash)
                        .is_some_and(|l| l.segment == segment.segment)
            })
            .collect()
    }

    /// Copies blobs (from sealed segments about to be dropped) to the active
    /// segment, durably, and points the index at the copies. Refuses
    /// (returning `Ok(false)`, copying nothing) when one fails verification:
    /// its stored bytes stay where they are.
    pub fn copy_blobs(&self, hashes: &[Hash]) -> Result<bool> {
        // Written although the index knows the hashes: they must be
        // re-homed before their segment goes.
        let mut batch = PackBatch::replacing();
        for hash in hashes {
            match self.get(hash) {
                Ok(bytes) => batch.add_blob(*hash, &bytes),
                Err(error) => {
                    tracing::warn!(%hash, %error, "not compacting a segment with an unreadable live blob");
                    return Ok(false);
                }
            }
        }
        if !batch.is_empty() {
            self.append(&mut batch, None, true)?;
        }
        Ok(true)
    }

    /// Removes a sealed segment whose live blobs were copied elsewhere
    /// ([`Pack::copy_blobs`]), with everything else it held.
    pub fn drop_segment(&self, blobs: &SegmentBlobs) -> Result<()> {
        let segment = blobs.segment;
        assert_ne!(
            Some(segment),
            self.log.active_id(),
            "cannot drop the active segment"
        );
        {
            let _writer = self.writer.lock();
            let mut index = self.index.write();
            for (hash, _) in &blobs.blobs {
                if index.get(hash).is_some_and(|l| l.segment == segment) {
                    index.remove(hash);
                }
            }
        }
        let hint = self.hint_path(segment);
        match std::fs::remove_file(&hint) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove hint", hint, e)),
        }
        self.log.remove(segment)?;
        fsync_dir(self.log.dir())?;
        Ok(())
    }
}

/// A sealed segment and the blobs the index placed in it when a collection
/// looked (see [`Pack::segment_blobs`]).
#[derive(Debug, Clone)]
pub struct SegmentBlobs {
    pub segment: u32,
    pub bytes: u64,
    blobs: Vec<(Hash, u32)>,
}

impl SegmentBlobs {
    /// Bytes the records of its blobs in `live` take.
    pub fn live_bytes(&self, live: &dyn Fn(&Hash) -> bool) -> u64 {
        self.blobs
            .iter()
            .filter(|(hash, _)| live(hash))
            .map(|(_, len)| u64::from(*len) + (frame::RECORD_HEADER_BYTES + HASH_BYTES) as u64)
            .sum()
    }
}

struct ScannedSegment {
    file_len: u64,
    entries: Vec<(Hash, Location)>,
    commits: Vec<(u64, CommitRecord)>,
    marks: Vec<(u64, u64)>,
    gaps: Vec<Range<u64>>,
    torn_tail: Option<u64>,
}

/// The index of one sealed segment, as stored in its hint file.
struct SegmentSummary {
    segment_len: u64,
    entries: Vec<(Hash, Location)>,
    last_commit: Option<CommitRecord>,
}

impl SegmentSummary {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * (HASH_BYTES + 12));
        out.push(HINT_VERSION);
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (hash, location) in &self.entries {
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(&location.offset.to_le_bytes());
            out.extend_from_slice(&location.len.to_le_bytes());
        }
        match &self.last_commit {
            Some(commit) => {
                out.push(1);
                out.extend_from_slice(&commit.encode());
            }
            None => out.push(0),
        }
        out
    }

    fn decode(segment: u32, bytes: &[u8]) -> Option<SegmentSummary> {
        if bytes.first() != Some(&HINT_VERSION) {
            return None;
        }
        let segment_len = u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
        let count = u32::from_le_bytes(bytes.get(9..13)?.try_into().ok()?) as usize;
        let entry_bytes = HASH_BYTES + 12;
        let entries_end = 13usize.checked_add(count.checked_mul(entry_bytes)?)?;
        let mut entries = Vec::with_capacity(count);
        for raw in bytes.get(13..entries_end)?.chunks_exact(entry_bytes) {
            let hash = Hash::from_slice(raw)?;
            let offset = u64::from_le_bytes(raw[HASH_BYTES..HASH_BYTES + 8].try_into().ok()?);
            let len = u32::from_le_bytes(raw[HASH_BYTES + 8..].try_into().ok()?);
            if offset.checked_add(u64::from(len))? > segment_len {
                return None;
            }
            entries.push((
                hash,
                Location {
                    segment,
                    offset,
                    len,
                },
            ));
        }
        let last_commit = match bytes.get(entries_end)? {
            0 if bytes.len() == entries_end + 1 => None,
            1 => Some(CommitRecord::decode(bytes.get(entries_end + 1..)?)?),
            _ => return None,
        };
        Some(SegmentSummary {
            segment_len,
            entries,
            last_commit,
        })
    }
}
