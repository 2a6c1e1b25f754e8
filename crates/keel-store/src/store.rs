//! The store: one node's content-addressed, checkpointed key-value state.
//!
//! ## Guarantees
//! - [`Store::commit`] returns only after the transaction's blobs, its new
//!   root and its revision are durable (one fdatasync of the pack).
//! - A crash at any instant leaves the last acknowledged commit readable and
//!   nothing half-applied: recovery only accepts a commit record whose whole
//!   prefix of the log is intact (or, after damage in the middle, whose whole
//!   tree is present).
//! - Revisions grow by one per transaction that changes something and are
//!   never reused, not even after a rollback or restore.
//! - Readers never block writers: a [`Snapshot`] is an immutable root.
//!
//! ## Apply and flush
//! [`Store::apply`] changes the in-memory tree only (new chunks go to the pack
//! unsynced); [`Store::flush`] writes the changed nodes and a commit record.
//! The offline CLI commits (apply + durable flush) every time; a replicated
//! node applies many entries per flush because its Raft log is durable.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::checkpoint::{Checkpoint, CheckpointLog, Retention};
use crate::datadir::{DataDir, Identity, StoreConfig};
use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::key::{split_dir, split_key};
use crate::object::{Entry, EntryValue, Link, INLINE_VALUE_BYTES_MAX};
use crate::pack::{
    CommitRecord, Pack, PackBatch, PackRecovery, SegmentBlobs, SEGMENT_BYTES_TARGET_DEFAULT,
};
use crate::segment::Mode;
use crate::space::SpaceLimit;
use crate::tree::{self, Objects};
use crate::txn::{Op, StoredValue, Txn, TxnOutcome};

/// Largest value accepted by default (values are chunked; this is a sanity bound).
pub const VALUE_BYTES_MAX_DEFAULT: u64 = 4 * 1024 * 1024 * 1024;
/// Default size of the decoded-node cache.
pub const CACHE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Open for inspection only: no lock, no changes to any file.
    pub read_only: bool,
    pub cache_bytes: u64,
    pub segment_bytes_target: u64,
    /// Overrides the retention in `config.toml`.
    pub retention: Option<Retention>,
    pub value_bytes_max: u64,
    /// Number revisions strictly from the current one (`revision + 1`), as a
    /// replica must so that every replica agrees. Off, a store that lost
    /// acknowledged commits to damage continues above every revision it
    /// ever recorded instead.
    pub deterministic_revisions: bool,
    /// Fault injection: a budget for appends (see [`crate::space`]).
    pub space_limit: Option<Arc<SpaceLimit>>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            read_only: false,
            cache_bytes: CACHE_BYTES_DEFAULT,
            segment_bytes_target: SEGMENT_BYTES_TARGET_DEFAULT,
            retention: None,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            deterministic_revisions: false,
            space_limit: None,
        }
    }
}

/// How durable a flush must be before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync before returning.
    Sync,
    /// Written to the OS only; a later sync (or nothing, after a crash).
    Buffered,
}

/// What opening the store found and did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RecoveryReport {
    /// The previous writer did not close the store cleanly.
    pub unclean_shutdown: bool,
    /// Bytes cut from the end of the pack (a torn tail or unusable damage).
    pub truncated_bytes: u64,
    /// Where cut bytes that followed damage were preserved.
    pub quarantined: Option<PathBuf>,
    /// Damaged ranges in the middle of the pack whose later records were kept.
    pub padded_gaps: usize,
    /// Damaged ranges of data that had been durable (decay, not a crash):
    /// their blobs are missing until repaired by fsck or from a peer.
    pub decayed_ranges: usize,
    /// Damaged ranges in sealed segments (their blobs are unreadable).
    pub sealed_damage: usize,
    pub hints_rebuilt: usize,
    /// Retained checkpoints whose root is not in the pack.
    pub checkpoints_missing_root: Vec<u64>,
    /// The checkpoint history file was damaged.
    pub checkpoint_history_damage: Option<String>,
    pub head_revision: u64,
}

impl RecoveryReport {
    /// True when recovery had to do more than replay a clean log.
    pub fn found_damage(&self) -> bool {
        self.quarantined.is_some()
            || self.padded_gaps > 0
            || self.decayed_ranges > 0
            || self.sealed_damage > 0
            || !self.checkpoints_missing_root.is_empty()
            || self.checkpoint_history_damage.is_some()
    }
}

/// The state readers see.
#[derive(Clone, Debug)]
struct Head {
    root: Link,
    revision: u64,
}

#[derive(Debug)]
struct Writer {
    root: Link,
    revision: u64,
    /// Changes not yet written by a flush.
    dirty: bool,
    /// Metadata of the newest commit record.
    meta: Vec<u8>,
    /// Highest revision ever used (including by checkpoints and lost commits).
    max_revision: u64,
}

/// The part of [`Writer`] that applying changes, saved to undo a failed one.
/// `max_revision` is not in it: a revision once handed out stays used.
struct Unflushed {
    root: Link,
    revision: u64,
    dirty: bool,
}

impl Writer {
    fn unflushed(&self) -> Unflushed {
        Unflushed {
            root: self.root.clone(),
            revision: self.revision,
            dirty: self.dirty,
        }
    }

    fn restore(&mut self, saved: Unflushed) {
        self.root = saved.root;
        self.revision = saved.revision;
        self.dirty = saved.dirty;
    }
}

/// Keeps garbage collection out while blobs not yet referenced by any commit
/// are being written (streamed values, incoming snapshots).
#[derive(Debug, Default)]
struct GcGate {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

/// What a collection waits for before it runs, when the gate is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GcWait {
    Never,
    /// For a running collection, not for holds.
    ForCollection,
    /// For a running collection and every hold.
    ForAll,
}

/// A hold on the GC gate: collection waits until every hold is dropped.
pub struct GcHold {
    store: Arc<Inner>,
}

impl Drop for GcHold {
    fn drop(&mut self) {
        let gate = &self.store.gc_gate;
        gate.state.lock().0 -= 1;
        gate.changed.notify_all();
    }
}

struct Inner {
    dir: DataDir,
    objects: Objects,
    config: StoreConfig,
    options: StoreOptions,
    head: ArcSwap<Head>,
    /// The writer changed its tree since it last published it. Readers
    /// publish on demand ([`Store::snapshot`]) rather than every apply: a
    /// published tree is shared, and the writer must copy every node of it
    /// it edits next, while an unpublished one is edited in place.
    head_stale: AtomicBool,
    /// The writer's revision, published or not.
    revision: AtomicU64,
    /// Why the writer's tree was abandoned (see [`StoreError::Abandoned`]).
    abandoned: Mutex<Option<String>>,
    writer: Mutex<Writer>,
    checkpoints: Mutex<CheckpointLog>,
    /// Roots of checkpoints begun but not yet recorded
    /// ([`PendingCheckpoint`]): roots for collections meanwhile.
    pending_checkpoints: Mutex<Vec<Hash>>,
    gc_gate: GcGate,
    recovery: RecoveryReport,
}

/// One node's store. Cheap to clone; all clones share the same state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir.root())
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A checkpoint whose tree and commit record are written but not yet
/// durable ([`Store::begin_checkpoint`]). Until it is finished or dropped,
/// its root is a root for collections.
pub struct PendingCheckpoint {
    store: Store,
    commit: CommitRecord,
    /// The newest checkpoint's sequence when this one began.
    newest: Option<u64>,
}

impl PendingCheckpoint {
    /// The state it checkpoints.
    pub fn commit(&self) -> &CommitRecord {
        &self.commit
    }

    /// Makes the checkpoint durable (everything the pack holds now, without
    /// holding the writer: applies go on) and records it. `None` when a
    /// newer checkpoint was recorded meanwhile (a snapshot installed from
    /// a peer, a rollback): this older state must not become the newest.
    pub fn finish(self) -> Result<Option<Checkpoint>> {
        let inner = &self.store.inner;
        inner.objects.pack.sync_detached()?;
        // A root switch records its checkpoint under this lock too: either
        // it came first and is seen here, or it comes after this one.
        let mut checkpoints = inner.checkpoints.lock();
        if checkpoints.newest().map(|c| c.sequence) != self.newest {
            return Ok(None);
        }
        record_checkpoint(&mut checkpoints, self.commit.clone()).map(Some)
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        let mut pending = self.store.inner.pending_checkpoints.lock();
        if let Some(i) = pending.iter().position(|root| *root == self.commit.root) {
            pending.swap_remove(i);
        }
    }
}

/// Appends a checkpoint of a durable commit, unless the newest checkpoint
/// already holds that state, meta included (a replica's meta names the Raft
/// position it covers, which can move while the data does not).
fn record_checkpoint(checkpoints: &mut CheckpointLog, commit: CommitRecord) -> Result<Checkpoint> {
    if let Some(newest) = checkpoints.newest() {
        if newest.root == commit.root
            && newest.revision == commit.revision
            && newest.meta == commit.meta
        {
            return Ok(newest.clone());
        }
    }
    checkpoints.append(
        commit.revision,
        commit.root,
        commit.timestamp_ms,
        commit.meta,
    )
}

impl Store {
    /// Creates a new, empty store in `dir` (missing or empty).
    pub fn init(dir: &Path, options: StoreOptions) -> Result<Store> {
        DataDir::init(dir)?;
        let store = Store::open(dir, options)?;
        // Checkpoint the empty tree so there is always a point to return to.
        store.checkpoint()?;
        Ok(store)
    }

    /// Opens an existing store, recovering from a crash or damage if needed.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store> {
        let data_dir = DataDir::open(dir, !options.read_only)?;
        let config = StoreConfig::load(dir)?;
        let mode = if options.read_only {
            Mode::ReadOnly
        } else {
            Mode::ReadWrite
        };
        let (pack, pack_recovery) = Pack::open(
            &data_dir.pack(),
            &data_dir.staging(),
            mode,
            options.segment_bytes_target,
        )?;
        if let Some(limit) = &options.space_limit {
            pack.set_space_limit(limit.clone());
        }
        let objects = Objects::new(pack, options.cache_bytes);
        let mut recovery = RecoveryReport {
            unclean_shutdown: data_dir.was_dirty,
            sealed_damage: pack_recovery.sealed_gaps.len(),
            hints_rebuilt: pack_recovery.hints_rebuilt,
            ..RecoveryReport::default()
        };
        let head = recover_head(
            &objects,
            &data_dir,
            &pack_recovery,
            options.read_only,
            &mut recovery,
        )?;
        let retention = options.retention.unwrap_or(config.checkpoints);
        let mut checkpoints = CheckpointLog::open(
            &data_dir.checkpoints(),
            &data_dir.staging(),
            retention,
            !options.read_only,
        )?;
        checkpoints.set_space_limit(options.space_limit.clone());
        recovery.checkpoint_history_damage = checkpoints.damage.clone();
        recovery.checkpoints_missing_root = checkpoints
            .history()
            .iter()
            .filter(|c| objects.node(&c.root).is_err())
            .map(|c| c.sequence)
            .collect();
        let (root, revision, meta) = match &head {
            Some(commit) => (
                Link::Stored(commit.root),
                commit.revision,
                commit.meta.clone(),
            ),
            None => (Link::empty_dir(), 0, Vec::new()),
        };
        recovery.head_revision = revision;
        let max_revision = revision.max(checkpoints.max_revision());
        let inner = Inner {
            head: ArcSwap::from_pointee(Head {
                root: root.clone(),
                revision,
            }),
            head_stale: AtomicBool::new(false),
            revision: AtomicU64::new(revision),
            abandoned: Mutex::new(None),
            writer: Mutex::new(Writer {
                root,
                revision,
                dirty: false,
                meta,
                max_revision,
            }),
            checkpoints: Mutex::new(checkpoints),
            pending_checkpoints: Mutex::new(Vec::new()),
            gc_gate: GcGate::default(),
            dir: data_dir,
            objects,
            config,
            options,
            recovery,
        };
        if inner.recovery.found_damage() || inner.recovery.truncated_bytes > 0 {
            tracing::warn!(report = ?inner.recovery, "store recovered from damage");
        }
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Opens for inspection while another process may hold the store.
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        Store::open(
            dir,
            StoreOptions {
                read_only: true,
                ..StoreOptions::default()
            },
        )
    }

    pub fn dir(&self) -> &Path {
        self.inner.dir.root()
    }

    pub fn identity(&self) -> &Identity {
        self.inner.dir.identity()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.options.read_only
    }

    /// What opening the store found.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The blob pack (for verification and repair tools).
    pub fn pack(&self) -> &Pack {
        &self.inner.objects.pack
    }

    /// The pack with its node cache (for tree walks by tools).
    pub fn objects(&self) -> &Objects {
        &self.inner.objects
    }

    /// The current revision (including applied but not yet flushed changes).
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// A consistent read view of the current state: everything applied
    /// before the call.
    pub fn snapshot(&self) -> Snapshot {
        if self.inner.head_stale.load(Ordering::Acquire) {
            let writer = self.inner.writer.lock();
            if self.inner.head_stale.load(Ordering::Acquire) {
                self.publish(&writer);
            }
        }
        let head = self.inner.head.load_full();
        Snapshot {
            store: self.clone(),
            root: head.root.clone(),
            revision: head.revision,
            checkpoint: None,
        }
    }

    /// A read view of a retained checkpoint.
    pub fn at_checkpoint(&self, sequence: u64) -> Result<Snapshot> {
        let checkpoint = self
            .inner
            .checkpoints
            .lock()
            .get(sequence)
            .cloned()
            .ok_or(StoreError::CheckpointNotFound { sequence })?;
        Ok(self.at_root(checkpoint.root, checkpoint.revision, Some(sequence)))
    }

    /// A read view of any root hash.
    pub fn at_root(&self, root: Hash, revision: u64, checkpoint: Option<u64>) -> Snapshot {
        Snapshot {
            store: self.clone(),
            root: Link::Stored(root),
            revision,
            checkpoint,
        }
    }

    /// Convenience: the entry at `key` in the current state.
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.snapshot().get(key)
    }

    /// Retained checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.inner.checkpoints.lock().history().to_vec()
    }

    /// The last commit record written to (or recovered from) the pack.
    pub fn last_commit(&self) -> Option<CommitRecord> {
        self.inner.objects.pack.last_commit()
    }

    // ------------------------------------------------------------ writes

    /// Applies transactions to the in-memory tree, in order; each successful
    /// one that changes something gets the next revision. Not durable until
    /// [`Store::flush`]. Deterministic rejections are outcomes, not errors;
    /// an `Err` means a local failure (I/O, damaged data, a full disk).
    /// The writer edits its tree in place, so after an `Err` the store keeps
    /// no undo: readers keep the state published before the failure, and
    /// the store refuses changes ([`StoreError::Abandoned`]) until it is
    /// reopened from its last flushed commit. A replica's Raft stops at a
    /// failed apply anyway, and replays its log on restart. (Keeping an undo
    /// meant sharing the tree, so every batch copied every node it touched.)
    pub fn apply(&self, txns: &[Txn]) -> Result<Vec<TxnOutcome>> {
        self.apply_recording(txns, None)
    }

    /// Like [`Store::apply`], and appends one [`ChangeEvent`] per change of
    /// every transaction that changed something (for watchers).
    pub fn apply_recording(
        &self,
        txns: &[Txn],
        events: Option<&mut Vec<ChangeEvent>>,
    ) -> Result<Vec<TxnOutcome>> {
        let mut writer = self.inner.writer.lock();
        // Under the lock: another apply may have failed while this waited.
        self.check_writable()?;
        let mut recorded = Vec::new();
        match self.apply_locked(&mut writer, txns, &mut recorded) {
            Ok(outcomes) => {
                if let Some(sink) = events {
                    sink.append(&mut recorded);
                }
                self.inner
                    .revision
                    .store(writer.revision, Ordering::Release);
                self.inner.head_stale.store(true, Ordering::Release);
                Ok(outcomes)
            }
            Err(error) => {
                tracing::error!(%error, "an apply failed partway; the store takes no more changes until it is reopened");
                *self.inner.abandoned.lock() = Some(error.to_string());
                // Readers keep the last published state.
                self.inner.head_stale.store(false, Ordering::Release);
                Err(error)
            }
        }
    }

    fn apply_locked(
        &self,
        writer: &mut Writer,
        txns: &[Txn],
        events: &mut Vec<ChangeEvent>,
    ) -> Result<Vec<TxnOutcome>> {
        let mut outcomes = Vec::with_capacity(txns.len());
        let mut txn_events = Vec::new();
        for txn in txns {
            txn_events.clear();
            let outcome = self.apply_one(writer, txn, &mut txn_events)?;
            if let TxnOutcome::Applied { changed: true, .. } = &outcome {
                events.append(&mut txn_events);
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Lets readers see the writer's current tree.
    fn publish(&self, writer: &Writer) {
        self.inner.head.store(Arc::new(Head {
            root: writer.root.clone(),
            revision: writer.revision,
        }));
        self.inner
            .revision
            .store(writer.revision, Ordering::Release);
        self.inner.head_stale.store(false, Ordering::Release);
    }

    fn apply_one(
        &self,
        writer: &mut Writer,
        txn: &Txn,
        events: &mut Vec<ChangeEvent>,
    ) -> Result<TxnOutcome> {
        let objects = &self.inner.objects;
        for compare in &txn.compare {
            let names = match split_key(&compare.key) {
                Ok(names) => names,
                Err(error) => {
                    return Ok(TxnOutcome::Rejected {
                        reason: error.to_string(),
                    })
                }
            };
            let actual = match tree::get_path(objects, &writer.root, &names) {
                Ok(entry) => entry.map_or(0, |e| e.revision),
                Err(error) if error.is_deterministic() => 0,
                Err(error) => return Err(error),
            };
            if actual != compare.mod_revision {
                return Ok(TxnOutcome::CompareFailed {
                    key: compare.key.clone(),
                    expected: compare.mod_revision,
                    actual,
                });
            }
        }
        // Above every revision ever used: after damage lost acknowledged
        // commits, the next revision skips theirs instead of reusing them.
        // A replica numbers strictly, so that all replicas agree.
        let revision = if self.inner.options.deterministic_revisions {
            writer.revision + 1
        } else {
            writer.revision.max(writer.max_revision) + 1
        };
        // A transaction works on its own view so that it is all or nothing.
        // A lone put needs no copy: when it fails it has changed nothing
        // visible (at most made private copies of nodes on its path), so
        // the writer's root is taken and edited in place, and the nodes
        // earlier transactions of this batch made stay private for it.
        let lone_put = matches!(&txn.ops[..], [Op::Put { .. } | Op::PutStored { .. }]);
        let mut work = if lone_put {
            std::mem::replace(&mut writer.root, Link::empty_dir())
        } else {
            writer.root.clone()
        };
        let mut changed = false;
        let mut deleted = 0;
        for op in &txn.ops {
            match self.apply_op(&mut work, op, revision, events) {
                Ok((op_changed, op_deleted)) => {
                    changed |= op_changed;
                    deleted += op_deleted;
                }
                Err(error) => {
                    if lone_put {
                        writer.root = work;
                    }
                    if error.is_deterministic() {
                        return Ok(TxnOutcome::Rejected {
                            reason: error.to_string(),
                        });
                    }
                    return Err(error);
                }
            }
        }
        if !changed {
            if lone_put {
                writer.root = work;
            }
            return Ok(TxnOutcome::Applied {
                revision: writer.revision,
                changed: false,
                deleted: 0,
            });
        }
        writer.root = work;
        writer.revision = revision;
        writer.max_revision = writer.max_revision.max(revision);
        writer.dirty = true;
        Ok(TxnOutcome::Applied {
            revision,
            changed: true,
            deleted,
        })
    }

    /// Applies one operation to `work`; returns (changed, values deleted).
    fn apply_op(
        &self,
        work: &mut Link,
        op: &Op,
        revision: u64,
        events: &mut Vec<ChangeEvent>,
    ) -> Result<(bool, u64)> {
        let objects = &self.inner.objects;
        let event = |kind, key: &str, value: Option<Bytes>, size| ChangeEvent {
            revision,
            kind,
            key: key.trim_start_matches('/').to_string(),
            value,
            size,
        };
        match op {
            Op::Put { key, value } => {
                let names = split_key(key)?;
                if value.len() as u64 > self.inner.options.value_bytes_max {
                    return Err(StoreError::TooLarge {
                        what: "value",
                        size: value.len() as u64,
                        limit: self.inner.options.value_bytes_max,
                    });
                }
                let mut batch = PackBatch::new();
                let stored = tree::make_value(objects, value, &mut batch)?;
                // Chunks go to the pack now so readers of the applied state find them.
                objects.pack.write(batch, None, false)?;
                tree::put_path(objects, work, &names, stored, revision)?;
                let inline = (value.len() <= INLINE_VALUE_BYTES_MAX).then(|| value.clone());
                events.push(event(ChangeKind::Put, key, inline, value.len() as u64));
                Ok((true, 0))
            }
            Op::PutStored { key, value } => {
                let names = split_key(key)?;
                let value = match *value {
                    StoredValue::Blob { hash, size } => EntryValue::Blob { hash, size },
                    StoredValue::Chunked { list, size } => EntryValue::Chunked { list, size },
                };
                let mut live = HashSet::new();
                let probe = Link::Loaded(Arc::new(crate::object::NodeCell::new(
                    crate::object::Node::Leaf(crate::object::Leaf {
                        entries: vec![Entry {
                            name: "probe".into(),
                            revision,
                            value: value.clone(),
                        }],
                    }),
                )));
                // Every chunk must be present before a key may point at it.
                tree::mark(objects, &probe, &mut live, true)?;
                let size = value.size().unwrap_or(0);
                tree::put_path(objects, work, &names, value, revision)?;
                events.push(event(ChangeKind::Put, key, None, size));
                Ok((true, 0))
            }
            Op::Delete { key } => {
                let names = split_key(key)?;
                let removed = tree::remove_path(objects, work, &names, false, revision)?;
                if removed.is_some() {
                    events.push(event(ChangeKind::Delete, key, None, 0));
                }
                Ok((removed.is_some(), u64::from(removed.is_some())))
            }
            Op::DeletePrefix { prefix } => {
                let names = split_dir(prefix)?;
                if names.is_empty() {
                    let count = count_values(objects, work)?;
                    *work = Link::empty_dir();
                    if count > 0 {
                        events.push(event(ChangeKind::DeletePrefix, "", None, 0));
                    }
                    return Ok((count > 0, count));
                }
                match tree::remove_path(objects, work, &names, true, revision)? {
                    Some(entry) => {
                        let count = match &entry.value {
                            EntryValue::Dir { root, .. } => count_values(objects, root)?,
                            _ => 1,
                        };
                        events.push(event(ChangeKind::DeletePrefix, prefix, None, 0));
                        Ok((true, count))
                    }
                    None => Ok((false, 0)),
                }
            }
        }
    }

    /// Writes every applied change and a commit record carrying `meta`.
    /// With nothing new and the same `meta`, only syncs (if asked).
    pub fn flush(&self, durability: Durability, meta: Option<Vec<u8>>) -> Result<CommitRecord> {
        self.check_writable()?;
        let mut writer = self.inner.writer.lock();
        self.flush_locked(&mut writer, durability, meta)
    }

    fn flush_locked(
        &self,
        writer: &mut Writer,
        durability: Durability,
        meta: Option<Vec<u8>>,
    ) -> Result<CommitRecord> {
        let objects = &self.inner.objects;
        let meta_changed = meta.as_ref().is_some_and(|m| *m != writer.meta);
        if !writer.dirty && !meta_changed {
            if let Some(last) = objects.pack.last_commit() {
                if last.revision == writer.revision {
                    if durability == Durability::Sync {
                        objects.pack.sync()?;
                    }
                    return Ok(last);
                }
            }
        }
        // Readers must not wait for the flush to publish what was applied.
        if self.inner.head_stale.load(Ordering::Acquire) {
            self.publish(writer);
        }
        let mut batch = PackBatch::new();
        let root = tree::flush(objects, &writer.root, &mut batch)?;
        let commit = CommitRecord {
            revision: writer.revision,
            root,
            timestamp_ms: now_ms(),
            meta: meta.unwrap_or_else(|| writer.meta.clone()),
        };
        objects
            .pack
            .write(batch, Some(&commit), durability == Durability::Sync)?;
        writer.root = Link::Stored(root);
        writer.dirty = false;
        writer.meta = commit.meta.clone();
        self.publish(writer);
        Ok(commit)
    }

    /// Applies and durably commits transactions (the offline write path).
    /// On an error (a full disk, say) nothing of `txns` is applied, not even
    /// in memory, so a later commit cannot make them durable after all.
    pub fn commit(&self, txns: &[Txn]) -> Result<Vec<TxnOutcome>> {
        self.check_writable()?;
        let mut writer = self.inner.writer.lock();
        // Undone exactly on an error: holding `before` shares the tree, so
        // the batch copies whatever it edits.
        let before = writer.unflushed();
        let committed = self
            .apply_locked(&mut writer, txns, &mut Vec::new())
            .and_then(|outcomes| {
                self.flush_locked(&mut writer, Durability::Sync, None)?;
                Ok(outcomes)
            });
        if committed.is_err() {
            writer.restore(before);
            self.publish(&writer);
        }
        committed
    }

    /// Durably records the current state as a new checkpoint (or returns
    /// the newest one, when it already holds this state).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        self.check_writable()?;
        let mut writer = self.inner.writer.lock();
        let commit = self.flush_locked(&mut writer, Durability::Sync, None)?;
        record_checkpoint(&mut self.inner.checkpoints.lock(), commit)
    }

    /// Starts a checkpoint of the current state, with `meta` in its commit
    /// record: writes what was applied (not synced) and returns at once.
    /// [`PendingCheckpoint::finish`] then makes it durable and records it
    /// off the writer's path: its fdatasync covers every flush since the
    /// last sync, which on a slow disk takes seconds.
    pub fn begin_checkpoint(&self, meta: Option<Vec<u8>>) -> Result<PendingCheckpoint> {
        self.check_writable()?;
        let mut writer = self.inner.writer.lock();
        let commit = self.flush_locked(&mut writer, Durability::Buffered, meta)?;
        // Under the writer lock, so that no collection takes its roots
        // between this commit record ceasing to be the newest and the pin.
        self.inner.pending_checkpoints.lock().push(commit.root);
        let newest = self.inner.checkpoints.lock().newest().map(|c| c.sequence);
        Ok(PendingCheckpoint {
            store: self.clone(),
            commit,
            newest,
        })
    }

    /// Durably drops retained checkpoints by sequence (e.g. ones whose trees
    /// are damaged, which garbage collection could never walk). The newest
    /// checkpoint may not be named (asserted): after a repair or rollback it
    /// holds the current state.
    pub fn forget_checkpoints(&self, sequences: &BTreeSet<u64>) -> Result<()> {
        self.check_writable()?;
        let mut checkpoints = self.inner.checkpoints.lock();
        if let Some(newest) = checkpoints.newest() {
            assert!(
                !sequences.contains(&newest.sequence),
                "the newest checkpoint {} cannot be forgotten",
                newest.sequence
            );
        }
        checkpoints.forget(sequences)
    }

    /// The revision the next [`Store::install_root`] (or [`Store::reset_to_root`])
    /// will take: one above every revision ever used. Repair and restore give
    /// the entries they write this revision.
    pub fn next_install_revision(&self) -> u64 {
        let writer = self.inner.writer.lock();
        writer
            .max_revision
            .max(self.inner.checkpoints.lock().max_revision())
            + 1
    }

    /// Makes `root` the current state as a new revision (above every revision
    /// ever used), durably, and checkpoints it. Used by rollback and restore;
    /// every blob reachable from `root` must be present.
    pub fn reset_to_root(&self, root: Hash, meta: Option<Vec<u8>>) -> Result<Checkpoint> {
        self.install_root(Link::Stored(root), meta)
    }

    /// Makes a tree (possibly built in memory, e.g. by a repair) the current
    /// state as a new revision above every revision ever used, and
    /// checkpoints it. Nothing changes for readers or on the next open until
    /// the commit record is durable: a failure before that leaves only
    /// unreferenced blobs. The tree must be complete (verified here).
    pub fn install_root(&self, root: Link, meta: Option<Vec<u8>>) -> Result<Checkpoint> {
        self.check_writable()?;
        let objects = &self.inner.objects;
        let _hold = self.hold_gc();
        let mut batch = PackBatch::new();
        let hash = tree::flush(objects, &root, &mut batch)?;
        objects.pack.write(batch, None, false)?;
        let mut live = HashSet::new();
        tree::mark(objects, &Link::Stored(hash), &mut live, true)?;
        let mut writer = self.inner.writer.lock();
        let revision = writer
            .max_revision
            .max(self.inner.checkpoints.lock().max_revision())
            + 1;
        writer.max_revision = revision;
        self.switch_root(&mut writer, hash, revision, meta)
    }

    /// Makes `root` current at `revision`, durably, and checkpoints it. If
    /// the commit cannot be written, the writer keeps its previous tree.
    fn switch_root(
        &self,
        writer: &mut Writer,
        root: Hash,
        revision: u64,
        meta: Option<Vec<u8>>,
    ) -> Result<Checkpoint> {
        let before = writer.unflushed();
        writer.root = Link::Stored(root);
        writer.revision = revision;
        writer.dirty = true;
        let commit = match self.flush_locked(writer, Durability::Sync, meta) {
            Ok(commit) => commit,
            Err(error) => {
                writer.restore(before);
                return Err(error);
            }
        };
        self.inner.checkpoints.lock().append(
            commit.revision,
            commit.root,
            commit.timestamp_ms,
            commit.meta,
        )
    }

    /// Makes `root` the current state at exactly `revision` with `meta` (a
    /// replica installing a snapshot that a peer sent, as a root hash whose
    /// blobs were fetched beforehand), durably, and checkpoints it. The tree
    /// must be complete (verified here).
    pub fn adopt_root(&self, root: Hash, revision: u64, meta: Vec<u8>) -> Result<Checkpoint> {
        self.check_writable()?;
        let objects = &self.inner.objects;
        let mut live = HashSet::new();
        tree::mark(objects, &Link::Stored(root), &mut live, true)?;
        let mut writer = self.inner.writer.lock();
        writer.max_revision = writer.max_revision.max(revision);
        self.switch_root(&mut writer, root, revision, Some(meta))
    }

    /// Adds blobs that came from elsewhere (a peer), after checking that
    /// each hashes to its name. With `replace`, blobs the pack already holds
    /// are written again and the new copies are used from then on (the
    /// held ones are damaged). Not durable until the next sync or commit;
    /// hold [`Store::hold_gc`] until something references them.
    pub fn import_blobs(&self, blobs: &[(Hash, Bytes)], replace: bool) -> Result<()> {
        self.check_writable()?;
        let mut batch = if replace {
            PackBatch::replacing()
        } else {
            PackBatch::new()
        };
        for (hash, bytes) in blobs {
            let actual = Hash::of(bytes);
            if actual != *hash {
                return Err(StoreError::CorruptBlob {
                    hash: *hash,
                    actual,
                });
            }
            if bytes.len() > crate::object::BLOB_BYTES_MAX {
                return Err(StoreError::TooLarge {
                    what: "blob",
                    size: bytes.len() as u64,
                    limit: crate::object::BLOB_BYTES_MAX as u64,
                });
            }
            batch.add_blob(*hash, bytes);
        }
        self.inner.objects.pack.write(batch, None, false)
    }

    /// Writes a streamed value's chunks into the store. Hold the returned
    /// [`GcHold`] until a commit references the value.
    pub fn upload(&self, reader: &mut dyn std::io::Read) -> Result<(StoredValueOrInline, GcHold)> {
        self.check_writable()?;
        let hold = self.hold_gc();
        let value = tree::make_value_from_reader(
            &self.inner.objects,
            reader,
            self.inner.options.value_bytes_max,
        )?;
        let value = match value {
            EntryValue::Inline(bytes) => StoredValueOrInline::Inline(bytes),
            EntryValue::Blob { hash, size } => {
                StoredValueOrInline::Stored(StoredValue::Blob { hash, size })
            }
            EntryValue::Chunked { list, size } => {
                StoredValueOrInline::Stored(StoredValue::Chunked { list, size })
            }
            EntryValue::Dir { .. } => unreachable!("uploads are values"),
        };
        Ok((value, hold))
    }

    /// Keeps garbage collection from running until the hold is dropped.
    pub fn hold_gc(&self) -> GcHold {
        let gate = &self.inner.gc_gate;
        let mut state = gate.state.lock();
        while state.1 {
            gate.changed.wait(&mut state);
        }
        state.0 += 1;
        GcHold {
            store: self.inner.clone(),
        }
    }

    /// Reclaims space held by blobs that no retained checkpoint, the current
    /// state or an in-flight write can reach. Refuses to delete anything if
    /// any reachable object cannot be read: the live set must be certain.
    pub fn gc(&self, force: bool) -> Result<GcReport> {
        self.gc_gated(force, GcWait::ForAll)
            .map(|report| report.expect("a waiting collection always runs"))
    }

    /// Like [`Store::gc`], but returns `None` at once instead of waiting
    /// while another collection runs or writes of not-yet-referenced blobs
    /// hold the gate (a snapshot fetch can take minutes).
    pub fn try_gc(&self, force: bool) -> Result<Option<GcReport>> {
        self.gc_gated(force, GcWait::Never)
    }

    /// Like [`Store::try_gc`], but waits for a collection already running
    /// (seconds) and then runs its own: what that one started with may
    /// predate what the caller just freed (dropped checkpoints, say).
    /// Still `None` at once while holds keep the gate.
    pub fn gc_after_running(&self, force: bool) -> Result<Option<GcReport>> {
        self.gc_gated(force, GcWait::ForCollection)
    }

    fn gc_gated(&self, force: bool, wait: GcWait) -> Result<Option<GcReport>> {
        self.check_writable()?;
        let started = Instant::now();
        let gate = &self.inner.gc_gate;
        {
            let mut state = gate.state.lock();
            while state.1 || state.0 > 0 {
                let waits = match wait {
                    GcWait::Never => false,
                    GcWait::ForCollection => state.0 == 0,
                    GcWait::ForAll => true,
                };
                if !waits {
                    return Ok(None);
                }
                gate.changed.wait(&mut state);
            }
            state.1 = true;
        }
        let result = self.gc_pass(force);
        gate.state.lock().1 = false;
        gate.changed.notify_all();
        let mut report = result?;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(Some(report))
    }

    /// One collection. Writes go on while it marks and copies: it holds the
    /// writer lock only to take its roots and to drop each segment.
    ///
    /// Why no blob a commit refers to is lost: only segments sealed when the
    /// collection starts are dropped, and from them only blobs that nothing
    /// reached from the roots then (the writer's tree among them) and that no
    /// write reused since. A later commit refers to new blobs (in the active
    /// segment or a newer one: never dropped), to nodes of the writer's tree
    /// as it was at the start or to stored blobs a write reused, which the
    /// pack records while a collection runs ([`Pack::reuse`]). Each segment
    /// is dropped under the writer lock right after a look at that record,
    /// so nothing is reused between the look and the removal.
    fn gc_pass(&self, force: bool) -> Result<GcReport> {
        let (roots, sealed) = self.begin_collection()?;
        let collected = self.collect(force, roots, &sealed);
        self.inner.objects.pack.end_collection();
        collected
    }

    /// Under the writer lock: the roots of a collection and the segments it
    /// may drop; from here on the pack records reused blobs.
    fn begin_collection(&self) -> Result<(Vec<Link>, Vec<u32>)> {
        let objects = &self.inner.objects;
        let writer = self.inner.writer.lock();
        objects.pack.ensure_head_in_active()?;
        // The published head too: readers may hold it, and it may be older.
        let mut roots = vec![writer.root.clone(), self.inner.head.load().root.clone()];
        if let Some(last) = objects.pack.last_commit() {
            roots.push(Link::Stored(last.root));
        }
        let mut checkpoints = self.inner.checkpoints.lock();
        // Dropped checkpoints must stay dropped before their blobs go.
        checkpoints.persist_retention()?;
        roots.extend(checkpoints.history().iter().map(|c| Link::Stored(c.root)));
        drop(checkpoints);
        roots.extend(
            self.inner
                .pending_checkpoints
                .lock()
                .iter()
                .map(|root| Link::Stored(*root)),
        );
        objects.pack.begin_collection();
        Ok((roots, objects.pack.sealed_segments()))
    }

    fn collect(&self, force: bool, roots: Vec<Link>, sealed: &[u32]) -> Result<GcReport> {
        let objects = &self.inner.objects;
        let mut live = HashSet::new();
        for root in &roots {
            tree::mark(objects, root, &mut live, false)
                .map_err(|error| self.unreadable_live_object(error))?;
        }
        // Holding the writer's tree makes the writer copy what it edits.
        drop(roots);
        let mut report = GcReport::default();
        for segment in objects.pack.segment_blobs(sealed) {
            report.segments_examined += 1;
            let live_bytes = segment.live_bytes(&|hash| live.contains(hash));
            let mostly_garbage = live_bytes * 2 < segment.bytes;
            if !(force || mostly_garbage) {
                continue;
            }
            if self.compact_segment(&segment, &mut live)? {
                report.segments_compacted += 1;
                report.bytes_reclaimed += segment.bytes.saturating_sub(live_bytes);
            } else {
                report.segments_skipped_damaged += 1;
            }
        }
        report.live_blobs = live.len() as u64;
        Ok(report)
    }

    /// Why a collection stopped: it must know every live object.
    fn unreadable_live_object(&self, error: StoreError) -> StoreError {
        StoreError::Damaged {
            path: self.dir().to_path_buf(),
            data_dir: self.dir().to_path_buf(),
            reason: format!("garbage collection stopped, a live object is unreadable: {error}"),
        }
    }

    /// Copies the live blobs out of a sealed segment and drops it, one
    /// segment at a time so that space comes back as the collection goes
    /// (it also runs when the disk is nearly full). The drop happens under
    /// the writer lock, once the blobs writes reused since the collection
    /// began, and what they refer to, are live too. `Ok(false)`: a live blob
    /// is unreadable, and the segment stays.
    fn compact_segment(&self, segment: &SegmentBlobs, live: &mut HashSet<Hash>) -> Result<bool> {
        let objects = &self.inner.objects;
        let live_blobs = |live: &HashSet<Hash>| {
            objects
                .pack
                .live_blobs(segment, &|hash| live.contains(hash))
        };
        if !objects.pack.copy_blobs(&live_blobs(live))? {
            return Ok(false);
        }
        let _writer = self.inner.writer.lock();
        let reused = objects.pack.take_reused();
        let revived = reused.iter().any(|(hash, _)| !live.contains(hash));
        for (hash, kind) in reused {
            tree::mark_blob(objects, &hash, kind, live)
                .map_err(|error| self.unreadable_live_object(error))?;
        }
        if revived && !objects.pack.copy_blobs(&live_blobs(live))? {
            return Ok(false);
        }
        objects.pack.drop_segment(segment)?;
        Ok(true)
    }

    /// Flushes pending changes durably and records a clean shutdown.
    pub fn close(self) -> Result<()> {
        if self.inner.options.read_only {
            return Ok(());
        }
        self.flush(Durability::Sync, None)?;
        self.inner.dir.mark_clean()
    }

    /// Space used by the pack, and blob count.
    pub fn stats(&self) -> StoreStats {
        let pack = &self.inner.objects.pack;
        StoreStats {
            pack_bytes: pack.total_bytes(),
            segments: pack.segment_ids().len(),
            blobs: pack.blob_count(),
            revision: self.revision(),
            checkpoints: self.inner.checkpoints.lock().history().len(),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.inner.options.read_only {
            return Err(StoreError::ReadOnly);
        }
        if let Some(reason) = self.inner.abandoned.lock().clone() {
            return Err(StoreError::Abandoned { reason });
        }
        Ok(())
    }
}

/// One change made by an applied transaction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeEvent {
    pub revision: u64,
    pub kind: ChangeKind,
    /// The key (for `delete_prefix`, the prefix; empty for everything).
    pub key: String,
    /// The new value when small enough to be stored inline.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<Bytes>,
    /// Size of the new value (puts).
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Put,
    Delete,
    DeletePrefix,
}

/// A streamed value: small enough to inline, or chunks already stored.
#[derive(Clone, Debug)]
pub enum StoredValueOrInline {
    Inline(Bytes),
    Stored(StoredValue),
}

impl StoredValueOrInline {
    /// The operation that puts this value at `key`.
    pub fn into_op(self, key: String) -> Op {
        match self {
            StoredValueOrInline::Inline(value) => Op::Put { key, value },
            StoredValueOrInline::Stored(value) => Op::PutStored { key, value },
        }
    }
}

/// Size of the store on disk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoreStats {
    pub pack_bytes: u64,
    pub segments: usize,
    pub blobs: usize,
    pub revision: u64,
    pub checkpoints: usize,
}

/// What a garbage collection did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub live_blobs: u64,
    pub segments_examined: u64,
    pub segments_compacted: u64,
    pub segments_skipped_damaged: u64,
    pub bytes_reclaimed: u64,
    pub elapsed_ms: u64,
}

fn count_values(objects: &Objects, dir: &Link) -> Result<u64> {
    let mut total = 0;
    for entry in tree::dir_entries(objects, dir)? {
        total += match &entry.value {
            EntryValue::Dir { root, .. } => count_values(objects, root)?,
            _ => 1,
        };
    }
    Ok(total)
}

/// Chooses the head after opening the pack, repairing the active segment
/// (in read-write mode) as the damage requires:
///
/// - a torn tail (nothing valid after it) is cut off: it can only hold
///   unacknowledged work;
/// - damage that a later sync mark proves was durable is decay of
///   acknowledged data, not a crash: everything around it is kept, the
///   damaged bytes are copied to `quarantine/` and padded over, and the
///   blobs they held show up as missing (for fsck and scrub to repair);
/// - other damage followed by valid records: if the newest commit after it
///   has a complete tree, the damage hit nothing it needs and is padded
///   over; otherwise everything from the damage on is quarantined (copied
///   aside, never deleted) and cut, and the head is the newest commit before it.
fn recover_head(
    objects: &Objects,
    dir: &DataDir,
    recovery: &PackRecovery,
    read_only: bool,
    report: &mut RecoveryReport,
) -> Result<Option<CommitRecord>> {
    let active = &recovery.active;
    let pack = &objects.pack;
    let quarantine = dir.quarantine();
    let (durable_gaps, suspect_gaps): (Vec<_>, Vec<_>) = active
        .gaps
        .iter()
        .cloned()
        .partition(|g| active.was_durable(g.start));
    report.decayed_ranges = durable_gaps.len();
    let first_suspect = match (suspect_gaps.first().map(|g| g.start), active.torn_tail) {
        (Some(g), Some(t)) => Some(g.min(t)),
        (g, t) => g.or(t),
    };
    let newest = active.commits.last().map(|(_, c)| c.clone());
    let Some(first_suspect) = first_suspect else {
        if !read_only && !durable_gaps.is_empty() {
            pack.pad_gaps(&durable_gaps, &quarantine)?;
            report.quarantined = Some(quarantine);
        }
        let in_active = newest.is_some();
        let head = newest.or_else(|| recovery.sealed_last_commit.clone());
        pack.set_recovered_head(head.clone(), in_active);
        return Ok(head);
    };
    let newest_after = active.commits.last().filter(|(at, _)| *at > first_suspect);
    let salvage = match newest_after {
        Some((_, commit)) if !suspect_gaps.is_empty() => {
            let mut live = HashSet::new();
            tree::mark(objects, &Link::Stored(commit.root), &mut live, true).is_ok()
        }
        _ => false,
    };
    if salvage {
        if !read_only {
            pack.pad_gaps(&active.gaps, &quarantine)?;
            report.quarantined = Some(quarantine);
            if let Some(tail) = active.torn_tail {
                report.truncated_bytes = active.file_len - tail;
                pack.truncate_active(tail, None)?;
            }
        }
        report.padded_gaps = active.gaps.len();
        pack.set_recovered_head(newest.clone(), true);
        return Ok(newest);
    }
    let head_in_active = active
        .commits
        .iter()
        .rev()
        .find(|(at, _)| *at < first_suspect)
        .map(|(_, c)| c.clone());
    let in_active = head_in_active.is_some();
    let head = head_in_active.or_else(|| recovery.sealed_last_commit.clone());
    if !read_only {
        let before: Vec<_> = durable_gaps
            .iter()
            .filter(|g| g.end <= first_suspect)
            .cloned()
            .collect();
        if !before.is_empty() {
            pack.pad_gaps(&before, &quarantine)?;
        }
        // Valid records after the damage may matter to someone: keep a copy.
        let keep_copy = !suspect_gaps.is_empty();
        report.truncated_bytes = active.file_len - first_suspect;
        pack.truncate_active(first_suspect, keep_copy.then_some(quarantine.as_path()))?;
        if keep_copy || !before.is_empty() {
            report.quarantined = Some(quarantine);
        }
    }
    pack.set_recovered_head(head.clone(), in_active);
    Ok(head)
}

// ---------------------------------------------------------------- reads

/// A consistent, immutable read view of one root.
#[derive(Clone)]
pub struct Snapshot {
    store: Store,
    root: Link,
    revision: u64,
    checkpoint: Option<u64>,
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ListItem {
    /// Full key of the entry.
    pub key: String,
    pub kind: ItemKind,
    /// Value size in bytes, or number of direct entries of a directory.
    pub size: u64,
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Value,
    Dir,
}

impl Snapshot {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn checkpoint(&self) -> Option<u64> {
        self.checkpoint
    }

    pub fn root(&self) -> &Link {
        &self.root
    }

    /// The root hash, if the state has been flushed.
    pub fn root_hash(&self) -> Option<Hash> {
        self.root.known_hash()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The entry at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        let names = split_key(key)?;
        tree::get_path(&self.store.inner.objects, &self.root, &names)
    }

    /// The whole value at `key` (verified), or `None` if absent.
    pub fn get_value(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key)? {
            None => Ok(None),
            Some(entry) if entry.value.is_dir() => Err(StoreError::IsADirectory {
                path: key.to_string(),
            }),
            Some(entry) => Ok(Some(tree::read_value(
                &self.store.inner.objects,
                &entry.value,
            )?)),
        }
    }

    /// Reads a value entry into memory (verifying every chunk).
    pub fn read(&self, value: &EntryValue) -> Result<Bytes> {
        tree::read_value(&self.store.inner.objects, value)
    }

    /// Streams a value to `out`; returns the bytes written.
    pub fn write_to(&self, value: &EntryValue, out: &mut dyn std::io::Write) -> Result<u64> {
        tree::write_value_to(&self.store.inner.objects, value, out)
    }

    /// Lists a directory ("" for the root): direct entries, or with
    /// `recursive` every value below it. Sorted by key.
    pub fn list(&self, dir: &str, recursive: bool) -> Result<Vec<ListItem>> {
        let names = split_dir(dir)?;
        let objects = &self.store.inner.objects;
        let Some(root) = tree::get_dir(objects, &self.root, &names)? else {
            return Ok(Vec::new());
        };
        let prefix = if names.is_empty() {
            String::new()
        } else {
            format!("{}/", names.join("/"))
        };
        let mut out = Vec::new();
        list_into(objects, &root, &prefix, recursive, &mut out)?;
        if recursive {
            out.sort_by(|a, b| a.key.cmp(&b.key));
        }
        Ok(out)
    }

    /// Whether `dir` names an existing directory (the root always exists).
    pub fn is_dir(&self, dir: &str) -> Result<bool> {
        let names = split_dir(dir)?;
        match tree::get_dir(&self.store.inner.objects, &self.root, &names) {
            Ok(dir) => Ok(dir.is_some()),
            Err(StoreError::NotADirectory { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Number of values in the whole tree.
    pub fn count_values(&self) -> Result<u64> {
        count_values(&self.store.inner.objects, &self.root)
    }
}

fn list_into(
    objects: &Objects,
    dir: &Link,
    prefix: &str,
    recursive: bool,
    out: &mut Vec<ListItem>,
) -> Result<()> {
    for entry in tree::dir_entries(objects, dir)? {
        let key = format!("{prefix}{}", entry.name);
        match &entry.value {
            EntryValue::Dir { root, count } => {
                if recursive {
                    list_into(objects, root, &format!("{key}/"), true, out)?;
                } else {
                    out.push(ListItem {
                        key,
                        kind: ItemKind::Dir,
                        size: *count,
                        revision: entry.revision,
                    });
                }
            }
            value => out.push(ListItem {
                key,
                kind: ItemKind::Value,
                size: value.size().unwrap_or(0),
                revision: entry.revision,
            }),
        }
    }
    Ok(())
}

/// Sequences of retained checkpoints whose trees are incomplete or damaged.
pub fn damaged_checkpoints(store: &Store) -> BTreeSet<u64> {
    let objects = store.objects();
    store
        .checkpoints()
        .iter()
        .filter(|c| {
            let mut live = HashSet::new();
            tree::mark(objects, &Link::Stored(c.root), &mut live, true).is_err()
        })
        .map(|c| c.sequence)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic incompressible bytes: BLAKE3's output stream of the seed.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        let mut hasher = blake3::Hasher::new();
        hasher.update(&seed.to_le_bytes());
        hasher.finalize_xof().fill(&mut bytes);
        bytes
    }

    /// Segments of 16 KiB: a value of a few hundred KiB seals several.
    fn small_segments() -> StoreOptions {
        StoreOptions {
            segment_bytes_target: 16 * 1024,
            ..StoreOptions::default()
        }
    }

    /// What writes do while a collection runs survives it: blobs they bring
    /// back that the mark found garbage (here a large value set again: its
    /// chunks and chunk list) are copied out of the segments it drops, and
    /// segments sealed after it started (full of new blobs the mark never
    /// saw) are not dropped.
    #[test]
    fn writes_made_while_a_collection_runs_survive_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), small_segments()).unwrap();
        let large = noise(7, 300_000);
        store.commit(&[Txn::put("k", large.clone())]).unwrap();
        store.commit(&[Txn::put("k", b"small".to_vec())]).unwrap();
        store.flush(Durability::Sync, None).unwrap();
        let (roots, sealed) = store.begin_collection().unwrap();
        assert!(!sealed.is_empty(), "the large value's segments are sealed");
        // Between the mark's roots and its end, the old value comes back,
        // and a new one fills (and seals) new segments.
        let fresh = noise(8, 300_000);
        store
            .commit(&[
                Txn::put("k", large.clone()),
                Txn::put("fresh", fresh.clone()),
            ])
            .unwrap();
        assert!(store.inner.objects.pack.sealed_segments().len() > sealed.len() + 1);
        let report = store.collect(true, roots, &sealed).unwrap();
        store.inner.objects.pack.end_collection();
        assert!(report.segments_compacted > 0, "{report:?}");
        let check = |store: &Store| {
            let view = store.snapshot();
            assert_eq!(view.get_value("k").unwrap().unwrap(), large);
            assert_eq!(view.get_value("fresh").unwrap().unwrap(), fresh);
        };
        check(&store);
        drop(store);
        let store = Store::open(dir.path(), small_segments()).unwrap();
        check(&store);
        assert!(!store.recovery().found_damage(), "{:?}", store.recovery());
    }

    /// A checkpoint begun and finished later records the state it began
    /// at, whatever was applied and flushed meanwhile, and a collection in
    /// between keeps its tree, to which nothing else refers by then. Once a
    /// root switch recorded a newer checkpoint, finishing records nothing.
    #[test]
    fn a_begun_checkpoint_records_its_state_and_keeps_its_tree_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), small_segments()).unwrap();
        let old = noise(1, 300_000);
        store.commit(&[Txn::put("k", old.clone())]).unwrap();
        let pending = store.begin_checkpoint(Some(b"applied 1".to_vec())).unwrap();
        let began = pending.commit().clone();
        store.commit(&[Txn::put("k", b"new".to_vec())]).unwrap();
        let report = store.gc(true).unwrap();
        assert!(report.segments_compacted > 0, "{report:?}");
        let checkpoint = pending
            .finish()
            .unwrap()
            .expect("nothing newer was recorded");
        assert_eq!(
            (checkpoint.root, checkpoint.revision, &checkpoint.meta[..]),
            (began.root, began.revision, &b"applied 1"[..])
        );
        assert_eq!(store.checkpoints().last(), Some(&checkpoint));
        drop(store);
        let store = Store::open(dir.path(), small_segments()).unwrap();
        let view = store.at_checkpoint(checkpoint.sequence).unwrap();
        assert_eq!(view.get_value("k").unwrap().unwrap(), old);
        assert_eq!(
            store.snapshot().get_value("k").unwrap().unwrap(),
            b"new"[..]
        );

        let pending = store.begin_checkpoint(None).unwrap();
        let installed = store.reset_to_root(checkpoint.root, None).unwrap();
        assert_eq!(pending.finish().unwrap(), None);
        assert_eq!(store.checkpoints().last(), Some(&installed));
    }

    /// A caller that frees space (drops checkpoints) and then collects must
    /// not be turned away by a collection already running, which may have
    /// taken its roots before: it waits for that one and runs its own. A
    /// hold (a snapshot fetch, minutes long) still turns it away at once.
    #[test]
    fn a_collection_after_running_waits_for_a_running_one_but_not_for_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), StoreOptions::default()).unwrap();
        store.commit(&[Txn::put("k", b"v".to_vec())]).unwrap();
        let gate = &store.inner.gc_gate;
        gate.state.lock().1 = true;
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| store.gc_after_running(false));
            assert_eq!(store.try_gc(false).unwrap().map(|_| ()), None);
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(!waiting.is_finished(), "it waits for the running one");
            gate.state.lock().1 = false;
            gate.changed.notify_all();
            let report = waiting.join().unwrap().unwrap();
            assert!(report.is_some(), "it ran once the other one ended");
        });
        let hold = store.hold_gc();
        assert!(store.gc_after_running(false).unwrap().is_none());
        drop(hold);
        assert!(store.gc_after_running(false).unwrap().is_some());
    }

    /// A flush larger than a part is appended in parts. When a later part
    /// meets a full disk the flush fails, nothing refers to the parts
    /// written, the store keeps working, and once space exists again the
    /// next flush writes what is missing and everything reads back.
    #[test]
    fn a_large_flush_is_written_in_parts_and_survives_a_full_disk_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let limit = Arc::new(SpaceLimit::default());
        let options = || StoreOptions {
            space_limit: Some(limit.clone()),
            ..StoreOptions::default()
        };
        let store = Store::init(dir.path(), options()).unwrap();
        let value = |i: u64| noise(i, 200);
        let keys = 60_000;
        let txns: Vec<Txn> = (0..keys)
            .map(|i| Txn::put(format!("k/{i:06}"), value(i)))
            .collect();
        store.apply(&txns).unwrap();
        let part = PackBatch::PART_BYTES as u64;
        let before = store.pack().total_bytes();
        limit.set_remaining(Some(part + part / 2));
        let error = store.flush(Durability::Sync, None).unwrap_err();
        assert!(matches!(error, StoreError::DiskFull { .. }), "{error}");
        assert!(
            store.pack().total_bytes() >= before + part,
            "the first part was written"
        );
        limit.set_remaining(None);
        let commit = store.flush(Durability::Sync, None).unwrap();
        drop(store);
        let store = Store::open(dir.path(), options()).unwrap();
        assert_eq!(store.last_commit().unwrap().root, commit.root);
        let view = store.snapshot();
        for i in 0..keys {
            let got = view.get_value(&format!("k/{i:06}")).unwrap();
            assert_eq!(got.as_deref(), Some(&value(i)[..]), "k/{i:06}");
        }
        assert!(!store.recovery().found_damage(), "{:?}", store.recovery());
    }
}
