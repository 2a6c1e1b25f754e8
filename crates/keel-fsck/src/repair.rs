//! Repair: build a tree from the readable parts of a damaged one, move
//! damaged values to `lost+found/`, and install the result as a new checkpoint.
//!
//! ## What a repair does
//! - A value with any missing or corrupt chunk or chunk list moves to
//!   `lost+found/<original path>` holding the concatenation of the chunks
//!   that survive (an empty value when none do); the original key is unlinked.
//!   If that name is taken, `<path>.1`, `<path>.2`, … is used.
//! - A directory whose root node is unreadable is unlinked (its entry count,
//!   known from its parent, is reported as lost).
//! - A directory with some unreadable nodes, a structure error, or a
//!   non-canonical shape is rebuilt in canonical form from its readable
//!   entries (the lost ones are counted from the branch counts).
//! - Entries written by the repair (moved values, rebuilt directories) take
//!   the revision of the repair's commit; untouched subtrees are shared.
//!
//! ## Guarantees
//! - Nothing visible changes until [`keel_store::Store::install_root`] makes
//!   the repaired tree durable as a new checkpoint, above every revision ever
//!   used. Refusals (damage over `max_damage`, damage under a critical prefix,
//!   an unreadable root directory) happen before anything is written. A
//!   failure later leaves at most unreferenced chunk-list blobs in the pack,
//!   which garbage collection reclaims.
//! - Every repair found is persisted, including repairs that only unlink
//!   directories (flux-core's fsck wrote no checkpoint for those).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use keel_store::object::{
    encode_chunk_list, ChunkList, Entry, EntryValue, Link, CHUNK_LIST_ENTRIES_MAX,
    INLINE_VALUE_BYTES_MAX,
};
use keel_store::pack::PackBatch;
use keel_store::tree::{self, Objects};
use keel_store::{Checkpoint, Hash, Store};
use serde::Serialize;

use crate::error::FsckError;
use crate::finding::{child_path, touches_prefix, ObjectRole, Severity, ROOT_PATH};
use crate::salvage::{readable_entries, surviving_chunks};
use crate::verify::Verification;

/// Name of the directory damaged values move to.
pub const LOST_FOUND: &str = "lost+found";
/// Default limit on damaged keys a repair may handle (`--max-damage`).
pub const MAX_DAMAGE_KEYS_DEFAULT: u64 = 1000;
/// Suffixes tried when `lost+found/<path>` is taken.
const LOST_FOUND_SUFFIXES_MAX: u32 = 1000;

/// What a repair of a verified tree will change, derived from its findings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairPlan {
    /// Keys whose values are damaged: they move to `lost+found/`.
    pub damaged_values: BTreeSet<String>,
    /// Directories whose root node is unreadable, with their lost entry count.
    pub unlinked_directories: BTreeMap<String, u64>,
    /// Directories with some unreadable nodes, with their lost entry count.
    pub partly_lost_directories: BTreeMap<String, u64>,
    /// Directories to rebuild (structure errors, non-canonical shape).
    pub rebuilt_directories: BTreeSet<String>,
    /// The root directory itself is unreadable.
    pub root_unreadable: bool,
}

impl RepairPlan {
    pub fn from_verification(verification: &Verification) -> RepairPlan {
        let mut plan = RepairPlan::default();
        for finding in &verification.findings {
            let path = finding.path.clone();
            let lost = finding.lost_entries.unwrap_or(1).max(1);
            match (finding.severity, finding.role) {
                (_, ObjectRole::StoreFile) => {}
                (Severity::Error, role) if role.is_value() => {
                    plan.damaged_values.insert(path);
                }
                (Severity::Error, ObjectRole::DirectoryRoot) if path == ROOT_PATH => {
                    plan.root_unreadable = true;
                }
                (Severity::Error, ObjectRole::DirectoryRoot) => {
                    plan.unlinked_directories.insert(path, lost);
                }
                (Severity::Error, ObjectRole::DirectoryNode) if finding.lost_entries.is_some() => {
                    *plan.partly_lost_directories.entry(path).or_default() += lost;
                }
                _ => {
                    plan.rebuilt_directories.insert(path);
                }
            }
        }
        // A value below an unlinked directory goes with it.
        let unlinked: Vec<String> = plan.unlinked_directories.keys().cloned().collect();
        plan.damaged_values.retain(|key| {
            !unlinked
                .iter()
                .any(|dir| key.starts_with(&format!("{dir}/")))
        });
        plan
    }

    /// Whether there is anything to repair.
    pub fn is_empty(&self) -> bool {
        self.damaged_values.is_empty()
            && self.unlinked_directories.is_empty()
            && self.partly_lost_directories.is_empty()
            && self.rebuilt_directories.is_empty()
            && !self.root_unreadable
    }

    /// Damaged keys: values to move plus directory entries lost.
    pub fn damaged_keys(&self) -> u64 {
        self.damaged_values.len() as u64
            + self.unlinked_directories.values().sum::<u64>()
            + self.partly_lost_directories.values().sum::<u64>()
    }

    /// Damaged paths under one of the critical prefixes.
    pub fn critical_paths(&self, prefixes: &[String]) -> Vec<String> {
        let mut paths: Vec<&String> = self.damaged_values.iter().collect();
        paths.extend(self.unlinked_directories.keys());
        paths.extend(self.partly_lost_directories.keys());
        let root = ROOT_PATH.to_string();
        if self.root_unreadable {
            paths.push(&root);
        }
        paths
            .into_iter()
            .filter(|p| prefixes.iter().any(|prefix| touches_prefix(p, prefix)))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Refuses what a repair must never do (checked before any write).
    pub fn check_allowed(
        &self,
        max_damage: u64,
        critical: &[String],
        dir: &std::path::Path,
    ) -> Result<(), FsckError> {
        let data_dir = dir.display().to_string();
        if self.root_unreadable {
            return Err(FsckError::RootUnreadable { data_dir });
        }
        let critical = self.critical_paths(critical);
        if !critical.is_empty() {
            return Err(FsckError::CriticalDamage {
                paths: critical,
                data_dir,
            });
        }
        let damaged = self.damaged_keys();
        if damaged > max_damage {
            return Err(FsckError::TooMuchDamage {
                damaged,
                max_damage,
                data_dir,
            });
        }
        Ok(())
    }

    /// Directories on the way to any damage: the ones a repair rebuilds.
    fn dirty_directories(&self) -> BTreeSet<String> {
        let mut dirty = BTreeSet::from([ROOT_PATH.to_string()]);
        let mut add_parents = |path: &str, include_self: bool| {
            let names: Vec<&str> = path.split('/').collect();
            let end = if include_self {
                names.len()
            } else {
                names.len() - 1
            };
            for i in 1..=end {
                dirty.insert(names[..i].join("/"));
            }
        };
        for key in &self.damaged_values {
            add_parents(key, false);
        }
        for dir in self.unlinked_directories.keys() {
            add_parents(dir, false);
        }
        for dir in self
            .partly_lost_directories
            .keys()
            .chain(&self.rebuilt_directories)
        {
            if dir != ROOT_PATH {
                add_parents(dir, true);
            }
        }
        dirty
    }
}

/// A value moved to `lost+found/`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Moved {
    pub from: String,
    pub to: String,
    pub original_bytes: u64,
    pub kept_bytes: u64,
}

/// What a repair did.
#[derive(Clone, Debug, Serialize)]
pub struct RepairOutcome {
    pub moved: Vec<Moved>,
    pub unlinked_directories: BTreeMap<String, u64>,
    pub partly_lost_directories: BTreeMap<String, u64>,
    pub rebuilt_directories: BTreeSet<String>,
    /// The checkpoint holding the repaired tree.
    pub checkpoint: Checkpoint,
    /// Older checkpoints dropped because their trees cannot be walked
    /// (see [`drop_unwalkable_checkpoints`]).
    pub dropped_checkpoints: Vec<u64>,
}

/// Repairs the tree that `verification` checked and installs the result as
/// the store's new current state and checkpoint.
pub fn repair(
    store: &Store,
    verification: &Verification,
    max_damage: u64,
    critical: &[String],
) -> Result<RepairOutcome, FsckError> {
    let plan = RepairPlan::from_verification(verification);
    plan.check_allowed(max_damage, critical, store.dir())?;
    let _hold = store.hold_gc();
    let revision = store.next_install_revision();
    let mut builder = Rebuild {
        objects: store.objects(),
        plan: &plan,
        dirty: plan.dirty_directories(),
        revision,
        lost: Vec::new(),
    };
    let root_link = Link::Stored(verification.target.root);
    let entries = builder
        .directory(ROOT_PATH, &root_link, 0)
        .unwrap_or_default();
    let lost = std::mem::take(&mut builder.lost);
    let mut root = tree::build_dir(store.objects(), entries)?;
    let mut moved = Vec::with_capacity(lost.len());
    let mut batch = PackBatch::new();
    for (from, entry) in lost {
        let (value, original, kept) = salvage_value(store.objects(), &entry.value, &mut batch);
        let to = place_lost(store.objects(), &mut root, &from, value, revision)?;
        moved.push(Moved {
            from,
            to,
            original_bytes: original,
            kept_bytes: kept,
        });
    }
    store.objects().pack.write(batch, None, false)?;
    let checkpoint = store.install_root(root, None)?;
    debug_assert_eq!(
        checkpoint.revision, revision,
        "the repair's entries carry its revision"
    );
    let dropped_checkpoints = drop_unwalkable_checkpoints(store)?;
    Ok(RepairOutcome {
        dropped_checkpoints,
        moved,
        unlinked_directories: plan.unlinked_directories.clone(),
        partly_lost_directories: plan.partly_lost_directories.clone(),
        rebuilt_directories: plan.rebuilt_directories.clone(),
        checkpoint,
    })
}

/// Drops retained checkpoints whose directory nodes or chunk lists cannot
/// all be read, once a clean state is current. Garbage collection must walk
/// every retained tree and refuses to run while one is damaged, so keeping
/// them would stop collection until retention dropped them (hours); as
/// rollback targets they would need a repair anyway. Returns their sequences.
pub fn drop_unwalkable_checkpoints(store: &Store) -> Result<Vec<u64>, FsckError> {
    let objects = store.objects();
    let newest = store.checkpoints().last().map(|c| c.sequence);
    let mut damaged = BTreeSet::new();
    for checkpoint in store.checkpoints() {
        if Some(checkpoint.sequence) == newest {
            continue;
        }
        let mut live = std::collections::HashSet::new();
        let root = Link::Stored(checkpoint.root);
        match tree::mark(objects, &root, &mut live, false) {
            Ok(()) => {}
            Err(error) if error.is_damage() => {
                damaged.insert(checkpoint.sequence);
            }
            Err(error) => return Err(error.into()),
        }
    }
    if !damaged.is_empty() {
        store.forget_checkpoints(&damaged)?;
    }
    Ok(damaged.into_iter().collect())
}

/// The salvage walk: rebuilds dirty directories from their readable entries.
struct Rebuild<'a> {
    objects: &'a Objects,
    plan: &'a RepairPlan,
    dirty: BTreeSet<String>,
    revision: u64,
    /// Damaged values found, to move to `lost+found/`.
    lost: Vec<(String, Entry)>,
}

impl Rebuild<'_> {
    /// The entries the repaired directory at `path` keeps (`None`: unreadable).
    fn directory(&mut self, path: &str, root: &Link, depth: usize) -> Option<Vec<Entry>> {
        let entries = readable_entries(self.objects, root)?;
        let mut kept = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = child_path(path, &entry.name);
            match &entry.value {
                EntryValue::Dir { .. } if self.plan.unlinked_directories.contains_key(&key) => {}
                EntryValue::Dir { root, .. } if self.dirty.contains(&key) => {
                    if depth >= keel_store::key::KEY_SEGMENTS_MAX {
                        continue;
                    }
                    let Some(children) = self.directory(&key, root, depth + 1) else {
                        continue;
                    };
                    if children.is_empty() {
                        continue; // an empty directory goes with its last entry
                    }
                    let count = children.len() as u64;
                    let Ok(root) = tree::build_dir(self.objects, children) else {
                        continue;
                    };
                    kept.push(Entry {
                        name: entry.name.clone(),
                        revision: self.revision,
                        value: EntryValue::Dir { root, count },
                    });
                }
                _ if self.plan.damaged_values.contains(&key) => self.lost.push((key, entry)),
                _ => kept.push(entry),
            }
        }
        Some(kept)
    }
}

/// Builds the `lost+found/` value of a damaged value from its surviving
/// chunks. Returns (value, original size, bytes kept).
fn salvage_value(
    objects: &Objects,
    value: &EntryValue,
    batch: &mut PackBatch,
) -> (EntryValue, u64, u64) {
    let original = value.size().unwrap_or(0);
    let chunks = surviving_chunks(objects, value);
    let kept: u64 = chunks.iter().map(|(_, len)| len).sum();
    if kept as usize <= INLINE_VALUE_BYTES_MAX {
        let mut bytes = Vec::with_capacity(kept as usize);
        for (hash, _) in &chunks {
            if let Ok(chunk) = objects.pack.get(hash) {
                bytes.extend_from_slice(&chunk);
            }
        }
        let kept = bytes.len() as u64;
        return (EntryValue::Inline(Bytes::from(bytes)), original, kept);
    }
    if chunks.len() == 1 {
        let (hash, size) = chunks[0];
        return (EntryValue::Blob { hash, size }, original, kept);
    }
    let list = chunk_lists(chunks, batch);
    (EntryValue::Chunked { list, size: kept }, original, kept)
}

/// Writes the chunk-list tree over `entries` into `batch`; returns its root.
fn chunk_lists(mut entries: Vec<(Hash, u64)>, batch: &mut PackBatch) -> Hash {
    assert!(entries.len() > 1, "a chunk list holds two or more chunks");
    let mut level = 0u8;
    loop {
        let lists: Vec<(Hash, u64)> = entries
            .chunks(CHUNK_LIST_ENTRIES_MAX)
            .map(|group| {
                let bytes = encode_chunk_list(&ChunkList {
                    level,
                    entries: group.to_vec(),
                });
                let hash = Hash::of(&bytes);
                batch.add_blob(hash, &bytes);
                (hash, group.iter().map(|(_, size)| size).sum())
            })
            .collect();
        if lists.len() == 1 {
            return lists[0].0;
        }
        entries = lists;
        level += 1;
    }
}

/// Puts a salvaged value at `lost+found/<from>` (or a free variant of it)
/// in the repaired tree; returns the key used.
fn place_lost(
    objects: &Objects,
    root: &mut Link,
    from: &str,
    value: EntryValue,
    revision: u64,
) -> Result<String, FsckError> {
    let base = format!("{LOST_FOUND}/{from}");
    let flat = format!("{LOST_FOUND}/{}", from.replace('/', "%2F"));
    let candidates = std::iter::once(base.clone())
        .chain((1..LOST_FOUND_SUFFIXES_MAX).map(|n| format!("{base}.{n}")))
        .chain(std::iter::once(flat.clone()))
        .chain((1..LOST_FOUND_SUFFIXES_MAX).map(|n| format!("{flat}.{n}")));
    let mut last_error = None;
    for key in candidates {
        let Ok(names) = keel_store::key::split_key(&key) else {
            continue;
        };
        match tree::get_path(objects, root, &names) {
            Ok(None) => {}
            Ok(Some(_)) => continue,
            Err(error) => {
                last_error = Some(error.to_string());
                continue;
            }
        }
        match tree::put_path(objects, root, &names, value.clone(), revision) {
            Ok(_) => return Ok(key),
            Err(error) if error.is_deterministic() => last_error = Some(error.to_string()),
            Err(error) => return Err(error.into()),
        }
    }
    Err(FsckError::NoLostFoundName {
        key: from.to_string(),
        reason: last_error.unwrap_or_else(|| "every candidate name is taken".into()),
    })
}
