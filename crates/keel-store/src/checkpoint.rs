//! The checkpoint history: durable, named points to read from or roll back to.
//!
//! A checkpoint is `{sequence, revision, root, timestamp}` plus the commit's
//! opaque metadata. Sequences and revisions only grow. The history is an
//! append-only file of framed records (`checkpoints.log`); retention drops
//! old entries by rewriting the file atomically.
//!
//! Retention keeps the newest `keep_newest` checkpoints plus, for each of the
//! last `keep_hourly_hours` hours, the newest checkpoint taken in that hour.
//!
//! An append that fails on a full disk is cut off again, so the file keeps
//! ending on a record boundary and later appends work once space is freed.
//! Any other failed write or fsync latches, as in [`crate::segment`].

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result, StoreError};
use crate::frame;
use crate::fsutil::{fsync_dir, write_atomic};
use crate::hash::{Hash, HASH_BYTES};
use crate::space::{self, SpaceLimit};

const KIND_CHECKPOINT: u8 = 1;
const CHECKPOINT_VERSION: u8 = 1;
const HOUR_MS: u64 = 3600 * 1000;

/// One retained checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub sequence: u64,
    pub revision: u64,
    pub root: Hash,
    pub timestamp_ms: u64,
    #[serde(skip)]
    pub meta: Vec<u8>,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 8 + HASH_BYTES + 8 + 4 + self.meta.len());
        out.push(CHECKPOINT_VERSION);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(self.root.as_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.meta);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.first() != Some(&CHECKPOINT_VERSION) || bytes.len() < 61 {
            return None;
        }
        let meta_len = u32::from_le_bytes(bytes[57..61].try_into().ok()?) as usize;
        let meta = bytes.get(61..)?;
        if meta.len() != meta_len {
            return None;
        }
        Some(Checkpoint {
            sequence: u64::from_le_bytes(bytes[1..9].try_into().ok()?),
            revision: u64::from_le_bytes(bytes[9..17].try_into().ok()?),
            root: Hash::from_slice(&bytes[17..49])?,
            timestamp_ms: u64::from_le_bytes(bytes[49..57].try_into().ok()?),
            meta: meta.to_vec(),
        })
    }

    /// The time as RFC 3339 (UTC, seconds).
    pub fn time(&self) -> String {
        format_time_ms(self.timestamp_ms)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC.
pub fn format_time_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// How many checkpoints to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// The newest N checkpoints are always kept.
    pub keep_newest: usize,
    /// Plus the newest checkpoint of each of the last H hours.
    pub keep_hourly_hours: u32,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep_newest: 5,
            keep_hourly_hours: 24,
        }
    }
}

impl Retention {
    /// The sequences to keep out of `history` (sorted by sequence), at time `now_ms`.
    pub fn retained(&self, history: &[Checkpoint], now_ms: u64) -> BTreeSet<u64> {
        let mut keep: BTreeSet<u64> = history
            .iter()
            .rev()
            .take(self.keep_newest.max(1))
            .map(|c| c.sequence)
            .collect();
        let horizon = now_ms.saturating_sub(u64::from(self.keep_hourly_hours) * HOUR_MS);
        let mut hours_seen = BTreeSet::new();
        for checkpoint in history.iter().rev() {
            if checkpoint.timestamp_ms < horizon {
                break;
            }
            if hours_seen.insert(checkpoint.timestamp_ms / HOUR_MS) {
                keep.insert(checkpoint.sequence);
            }
        }
        keep
    }
}

/// The checkpoint file and the retained history in memory.
#[derive(Debug)]
pub struct CheckpointLog {
    path: PathBuf,
    staging: PathBuf,
    /// The file appends go to (read-write only) and its length.
    file: Option<(File, u64)>,
    /// Set after a failed write or fsync: no more appends until reopened.
    poisoned: Option<String>,
    /// Fault injection only (see [`crate::space`]).
    space: Option<Arc<SpaceLimit>>,
    /// Retained checkpoints, oldest first.
    history: Vec<Checkpoint>,
    /// Records in the file (retained or not), to decide when to rewrite it.
    records_in_file: usize,
    /// Highest sequence and revision ever recorded, even if no longer retained.
    max_sequence: u64,
    max_revision: u64,
    retention: Retention,
    /// Where recovery found damage, if anywhere.
    pub damage: Option<String>,
}

impl CheckpointLog {
    /// Opens the history (creating it in read-write mode). A torn tail is cut
    /// off; damage in the middle keeps every valid record around it.
    pub fn open(
        path: &Path,
        staging: &Path,
        retention: Retention,
        writable: bool,
    ) -> Result<CheckpointLog> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io("read checkpoint history", path, e)),
        };
        let scan = frame::scan(&bytes);
        let mut history = Vec::new();
        let (mut max_sequence, mut max_revision) = (0, 0);
        for record in &scan.records {
            let Some(decoded) = Checkpoint::decode(&bytes[record.payload.clone()]) else {
                continue;
            };
            max_sequence = max_sequence.max(decoded.sequence);
            max_revision = max_revision.max(decoded.revision);
            if record.kind == KIND_CHECKPOINT {
                history.push(decoded);
            }
        }
        history.sort_by_key(|c: &Checkpoint| c.sequence);
        history.dedup_by_key(|c| c.sequence);
        let damage = scan
            .first_damage()
            .map(|offset| format!("{} damaged at byte {offset}", path.display()));
        let mut log = CheckpointLog {
            path: path.to_path_buf(),
            staging: staging.to_path_buf(),
            file: None,
            poisoned: None,
            space: None,
            records_in_file: history.len(),
            max_sequence,
            max_revision,
            history,
            retention,
            damage,
        };
        // Retention as of now: checkpoints dropped earlier stay dropped.
        let keep = log.retention.retained(&log.history, now_ms());
        log.history.retain(|c| keep.contains(&c.sequence));
        if writable {
            if log.damage.is_some() || !path.exists() {
                // Rewrite from what survived, so appends follow valid records.
                log.rewrite()?;
            }
            log.file = Some(open_for_append(path)?);
        }
        Ok(log)
    }

    /// Makes appends draw on `limit` (fault injection, see [`crate::space`]).
    pub fn set_space_limit(&mut self, limit: Option<Arc<SpaceLimit>>) {
        self.space = limit;
    }

    /// Retained checkpoints, oldest first.
    pub fn history(&self) -> &[Checkpoint] {
        &self.history
    }

    pub fn get(&self, sequence: u64) -> Option<&Checkpoint> {
        self.history
            .binary_search_by_key(&sequence, |c| c.sequence)
            .ok()
            .map(|i| &self.history[i])
    }

    pub fn newest(&self) -> Option<&Checkpoint> {
        self.history.last()
    }

    pub fn max_revision(&self) -> u64 {
        self.max_revision
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Durably records a new checkpoint and applies retention.
    pub fn append(
        &mut self,
        revision: u64,
        root: Hash,
        timestamp_ms: u64,
        meta: Vec<u8>,
    ) -> Result<Checkpoint> {
        let checkpoint = Checkpoint {
            sequence: self.max_sequence + 1,
            revision,
            root,
            timestamp_ms,
            meta,
        };
        let mut bytes = Vec::new();
        frame::encode(KIND_CHECKPOINT, &checkpoint.encode(), &mut bytes);
        self.append_durably(&bytes)?;
        self.max_sequence = checkpoint.sequence;
        self.max_revision = self.max_revision.max(revision);
        self.history.push(checkpoint.clone());
        self.records_in_file += 1;
        self.apply_retention(timestamp_ms)?;
        Ok(checkpoint)
    }

    /// Appends framed records and fdatasyncs them (see the module doc for
    /// what a failure leaves behind).
    fn append_durably(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(cause) = &self.poisoned {
            return Err(StoreError::Poisoned {
                cause: cause.clone(),
            });
        }
        let (file, len) = self.file.as_mut().ok_or(StoreError::ReadOnly)?;
        let written = space::write_all_at(file, bytes, *len, self.space.as_deref())
            .map_err(|e| StoreError::io("append checkpoint", &self.path, e));
        let error = match written {
            Ok(()) => match file.sync_data() {
                Ok(()) => {
                    *len += bytes.len() as u64;
                    return Ok(());
                }
                Err(e) => StoreError::io("fsync checkpoint history", &self.path, e),
            },
            // Cut the partial record (this needs no space) so the file still
            // ends on a record boundary.
            Err(error @ StoreError::DiskFull { .. }) if file.set_len(*len).is_ok() => {
                return Err(error)
            }
            Err(error) => error,
        };
        self.poisoned = Some(error.to_string());
        Err(error)
    }

    fn apply_retention(&mut self, now_ms: u64) -> Result<()> {
        let keep = self.retention.retained(&self.history, now_ms);
        self.history.retain(|c| keep.contains(&c.sequence));
        // Rewrite once dropped records clearly outnumber kept ones. The
        // rewrite only saves space: on a full disk it waits for a later append.
        if self.records_in_file > 2 * self.history.len() + 16 {
            match self.rewrite() {
                Err(error @ StoreError::DiskFull { .. }) => {
                    tracing::warn!(%error, "checkpoint history not compacted; retrying later");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Makes retention's drops durable, so a later open (with any
    /// retention) never brings back a checkpoint whose blobs were collected.
    pub fn persist_retention(&mut self) -> Result<()> {
        if self.records_in_file == self.history.len() {
            return Ok(());
        }
        self.rewrite()
    }

    /// Drops checkpoints by sequence (e.g. ones whose data is gone). Durable.
    pub fn forget(&mut self, sequences: &BTreeSet<u64>) -> Result<()> {
        self.history.retain(|c| !sequences.contains(&c.sequence));
        self.rewrite()
    }

    fn rewrite(&mut self) -> Result<()> {
        let mut bytes = Vec::new();
        // The first record always restates the highest sequence and revision
        // so they are never reused even when those checkpoints are dropped.
        let marker = Checkpoint {
            sequence: self.max_sequence,
            revision: self.max_revision,
            root: Hash([0; HASH_BYTES]),
            timestamp_ms: 0,
            meta: Vec::new(),
        };
        let newest_is_max = self
            .history
            .last()
            .is_some_and(|c| c.sequence == self.max_sequence);
        if !newest_is_max && self.max_sequence > 0 {
            frame::encode(KIND_HIGH_WATER, &marker.encode(), &mut bytes);
        }
        for checkpoint in &self.history {
            frame::encode(KIND_CHECKPOINT, &checkpoint.encode(), &mut bytes);
        }
        write_atomic(&self.staging, &self.path, &bytes)?;
        self.records_in_file = self.history.len();
        self.damage = None;
        if let Some(parent) = self.path.parent() {
            fsync_dir(parent)?;
        }
        if self.file.is_some() {
            // The old handle names the replaced file: appends through it
            // would be lost, so without a new one nothing may be appended.
            match open_for_append(&self.path) {
                Ok(file) => self.file = Some(file),
                Err(error) => {
                    self.poisoned = Some(error.to_string());
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}

/// Opens the history for positional appends at its end (no `O_APPEND`: it
/// would make `pwrite` ignore the offset); returns the file and its length.
fn open_for_append(path: &Path) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .context("open checkpoint history", path)?;
    let len = file
        .metadata()
        .context("stat checkpoint history", path)?
        .len();
    Ok((file, len))
}

/// Record kind restating the highest sequence and revision ever used.
const KIND_HIGH_WATER: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sequence: u64, timestamp_ms: u64) -> Checkpoint {
        Checkpoint {
            sequence,
            revision: sequence,
            root: Hash::of(&sequence.to_le_bytes()),
            timestamp_ms,
            meta: Vec::new(),
        }
    }

    #[test]
    fn retention_keeps_newest_and_hourly() {
        let now = 100 * HOUR_MS;
        // Ten checkpoints per hour over the last 30 hours.
        let history: Vec<Checkpoint> = (0..300u64)
            .map(|i| at(i + 1, now - 30 * HOUR_MS + i * HOUR_MS / 10))
            .collect();
        let retention = Retention {
            keep_newest: 5,
            keep_hourly_hours: 24,
        };
        let keep = retention.retained(&history, now);
        // Newest five.
        for sequence in 296..=300 {
            assert!(keep.contains(&sequence));
        }
        // One per hour bucket within the last 24 hours (the newest of each).
        let hourly: BTreeSet<u64> = history
            .iter()
            .filter(|c| c.timestamp_ms >= now - 24 * HOUR_MS)
            .fold(std::collections::BTreeMap::new(), |mut m, c| {
                m.insert(c.timestamp_ms / HOUR_MS, c.sequence);
                m
            })
            .into_values()
            .collect();
        for sequence in &hourly {
            assert!(keep.contains(sequence), "hourly {sequence} dropped");
        }
        assert_eq!(keep.len(), hourly.union(&(296..=300).collect()).count());
    }

    #[test]
    fn history_survives_reopen_and_never_reuses_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.log");
        let retention = Retention {
            keep_newest: 2,
            keep_hourly_hours: 0,
        };
        let mut log = CheckpointLog::open(&path, dir.path(), retention, true).unwrap();
        for i in 1..=40u64 {
            log.append(i * 10, Hash::of(&i.to_le_bytes()), 1000 + i, Vec::new())
                .unwrap();
        }
        assert_eq!(
            log.history().iter().map(|c| c.sequence).collect::<Vec<_>>(),
            vec![39, 40]
        );
        log.forget(&[40].into_iter().collect()).unwrap();
        drop(log);
        let mut log = CheckpointLog::open(&path, dir.path(), retention, true).unwrap();
        assert_eq!(log.history().len(), 1);
        assert_eq!(log.max_revision(), 400);
        let next = log.append(410, Hash::of(b"x"), 5000, Vec::new()).unwrap();
        assert_eq!(next.sequence, 41, "sequence 40 must never be reused");
    }

    #[test]
    fn a_full_disk_leaves_no_partial_record_and_appends_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.log");
        let mut log = CheckpointLog::open(&path, dir.path(), Retention::default(), true).unwrap();
        let limit = Arc::new(SpaceLimit::default());
        log.set_space_limit(Some(limit.clone()));
        log.append(1, Hash::of(b"1"), 1, Vec::new()).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        limit.set_remaining(Some(10));
        let error = log.append(2, Hash::of(b"2"), 2, Vec::new()).unwrap_err();
        assert!(matches!(error, StoreError::DiskFull { .. }), "{error}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        limit.set_remaining(None);
        let next = log.append(3, Hash::of(b"3"), 3, Vec::new()).unwrap();
        assert_eq!(next.sequence, 2, "the failed append used no sequence");
        drop(log);
        let log = CheckpointLog::open(&path, dir.path(), Retention::default(), false).unwrap();
        assert_eq!(log.damage, None);
        let revisions: Vec<u64> = log.history().iter().map(|c| c.revision).collect();
        assert_eq!(revisions, vec![1, 3]);
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_checkpoints_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.log");
        let mut log = CheckpointLog::open(&path, dir.path(), Retention::default(), true).unwrap();
        for i in 1..=3u64 {
            log.append(i, Hash::of(&i.to_le_bytes()), i, Vec::new())
                .unwrap();
        }
        drop(log);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 7).unwrap();
        let log = CheckpointLog::open(&path, dir.path(), Retention::default(), true).unwrap();
        assert_eq!(log.history().len(), 2);
        assert_eq!(log.newest().unwrap().sequence, 2);
    }
}
