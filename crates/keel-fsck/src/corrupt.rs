//! The corruption tool for tests (`keel debug corrupt`): damages chosen or
//! random objects of a store and says exactly what it damaged, so tests can
//! check that fsck finds exactly that.
//!
//! It keeps the pack's frames valid, so it produces only the damage it
//! reports and store recovery has nothing to do:
//! - *delete a blob*: the blob's whole record is overwritten with a padding
//!   record of the same length (and the segment's hint file is removed, so
//!   a sealed segment is rescanned and the blob is really gone);
//! - *flip bits*: bits of the blob's bytes are flipped and the record's
//!   checksums rewritten, so only the BLAKE3 check fails (silent bit rot).
//!
//! It holds the store's lock while it works and makes every change durable.
//! Damage to a blob is reported at every key (or directory) that reaches it
//! in the current state.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::Path;

use keel_store::frame;
use keel_store::hash::HASH_BYTES;
use keel_store::object::{EntryValue, Link, Node};
use keel_store::pack::KIND_BLOB;
use keel_store::tree::Objects;
use keel_store::{Hash, Store, StoreOptions};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::FsckError;
use crate::finding::{child_path, FindingKind, ROOT_PATH};
use crate::salvage::readable_entries;

/// What to damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Remove a value's chunk (one chunk of the value).
    DeleteBlob,
    /// Flip bits in a value's chunk.
    FlipBits,
    /// Remove a directory's root node.
    DeleteDir,
    /// Flip bits in a directory's root node.
    DamageDir,
    /// Remove one node below a directory's root (a directory of more than one node).
    DeleteDirNode,
}

/// One damaged blob and the path fsck must report it at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Damage {
    pub path: String,
    pub blob: Hash,
    pub mode: Mode,
    /// The finding kind fsck reports for it.
    pub expect: FindingKind,
}

/// Everything one run damaged.
#[derive(Clone, Debug, Serialize)]
pub struct CorruptReport {
    pub seed: u64,
    pub damaged: Vec<Damage>,
    /// Distinct blobs damaged.
    pub blobs: usize,
}

/// Which objects a store's current tree reaches, by what.
#[derive(Default)]
struct Census {
    /// Value chunk -> keys whose value includes it.
    chunks: BTreeMap<Hash, BTreeSet<String>>,
    /// Directory root node -> directory paths.
    dir_roots: BTreeMap<Hash, BTreeSet<String>>,
    /// Non-root directory node -> directory paths.
    dir_nodes: BTreeMap<Hash, BTreeSet<String>>,
}

fn census(objects: &Objects, root: Hash) -> Census {
    let mut census = Census::default();
    walk(objects, &Link::Stored(root), ROOT_PATH, &mut census, 0);
    census
}

fn walk(objects: &Objects, dir: &Link, path: &str, census: &mut Census, depth: usize) {
    if depth > keel_store::key::KEY_SEGMENTS_MAX {
        return;
    }
    if let Some(hash) = dir.known_hash() {
        if path != ROOT_PATH {
            census
                .dir_roots
                .entry(hash)
                .or_default()
                .insert(path.to_string());
        }
        if let Ok(cell) = objects.node(&hash) {
            if let Node::Branch(branch) = &cell.node {
                note_inner_nodes(objects, &branch.children, path, census);
            }
        }
    }
    let Some(entries) = readable_entries(objects, dir) else {
        return;
    };
    for entry in entries {
        let key = child_path(path, &entry.name);
        match &entry.value {
            EntryValue::Dir { root, .. } => walk(objects, root, &key, census, depth + 1),
            EntryValue::Inline(_) => {}
            value => {
                for (chunk, _) in crate::salvage::surviving_chunks(objects, value) {
                    census.chunks.entry(chunk).or_default().insert(key.clone());
                }
            }
        }
    }
}

fn note_inner_nodes(
    objects: &Objects,
    children: &[keel_store::object::Child],
    path: &str,
    census: &mut Census,
) {
    for child in children {
        if let Some(hash) = child.link.known_hash() {
            census
                .dir_nodes
                .entry(hash)
                .or_default()
                .insert(path.to_string());
            if let Ok(cell) = objects.node(&hash) {
                if let Node::Branch(branch) = &cell.node {
                    note_inner_nodes(objects, &branch.children, path, census);
                }
            }
        }
    }
}

/// Damages a store: `count` random objects of `mode` (or the object of
/// `key` when given). Takes the store's lock; refuses while it is in use.
pub fn corrupt(
    dir: &Path,
    mode: Mode,
    key: Option<&str>,
    count: usize,
    seed: u64,
) -> Result<CorruptReport, FsckError> {
    let store = Store::open(dir, StoreOptions::default())?;
    let root = store
        .snapshot()
        .root_hash()
        .unwrap_or_else(keel_store::tree::empty_dir_hash);
    let census = census(store.objects(), root);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let candidates = candidates(&census, mode, key)?;
    let chosen: Vec<Hash> = match key {
        Some(_) => candidates.into_iter().take(1).collect(),
        None => candidates
            .choose_multiple(&mut rng, count)
            .copied()
            .collect(),
    };
    let delete = matches!(
        mode,
        Mode::DeleteBlob | Mode::DeleteDir | Mode::DeleteDirNode
    );
    let mut damaged = Vec::new();
    for hash in &chosen {
        if delete {
            delete_blob(&store, hash)?;
        } else {
            flip_bits(&store, hash, &mut rng)?;
        }
        let paths = census
            .chunks
            .get(hash)
            .or(census.dir_roots.get(hash))
            .or(census.dir_nodes.get(hash))
            .cloned()
            .unwrap_or_default();
        let expect = if delete {
            FindingKind::MissingBlob
        } else {
            FindingKind::CorruptBlob
        };
        damaged.extend(paths.into_iter().map(|path| Damage {
            path,
            blob: *hash,
            mode,
            expect,
        }));
    }
    store.close()?;
    damaged.sort();
    Ok(CorruptReport {
        seed,
        damaged,
        blobs: chosen.len(),
    })
}

/// The blobs `mode` may damage, in a stable order.
fn candidates(census: &Census, mode: Mode, key: Option<&str>) -> Result<Vec<Hash>, FsckError> {
    let by_key = |map: &BTreeMap<Hash, BTreeSet<String>>| -> Vec<Hash> {
        match key {
            Some(key) => {
                let key = key.trim_matches('/');
                map.iter()
                    .filter(|(_, paths)| paths.contains(key))
                    .map(|(h, _)| *h)
                    .collect()
            }
            None => map.keys().copied().collect(),
        }
    };
    let found = match mode {
        Mode::DeleteBlob | Mode::FlipBits => by_key(&census.chunks),
        Mode::DeleteDir | Mode::DamageDir => by_key(&census.dir_roots),
        Mode::DeleteDirNode => by_key(&census.dir_nodes),
    };
    if found.is_empty() {
        let what = match key {
            Some(key) => format!("{key} has no object that mode {mode:?} can damage"),
            None => format!("the store has no object that mode {mode:?} can damage"),
        };
        return Err(FsckError::Usage { message: what });
    }
    Ok(found)
}

/// Where a blob's whole record lies: (segment file, record offset, record length).
fn record_of(store: &Store, hash: &Hash) -> Result<(std::path::PathBuf, u64, usize), FsckError> {
    let location = store
        .pack()
        .location(hash)
        .ok_or_else(|| FsckError::Usage {
            message: format!("blob {hash} is not in the pack"),
        })?;
    let header = (frame::RECORD_HEADER_BYTES + HASH_BYTES) as u64;
    let offset = location
        .offset
        .checked_sub(header)
        .expect("a blob's bytes follow its header");
    let len = header as usize + location.len as usize;
    Ok((store.pack().segment_path(location.segment), offset, len))
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), FsckError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| FsckError::io("open segment to damage it", path, e))?;
    file.write_all_at(bytes, offset)
        .and_then(|()| file.sync_all())
        .map_err(|e| FsckError::io("damage segment", path, e))
}

/// Replaces a blob's record with padding, and drops its segment's hint so a
/// sealed segment is rescanned (the blob is then really absent).
fn delete_blob(store: &Store, hash: &Hash) -> Result<(), FsckError> {
    let (path, offset, len) = record_of(store, hash)?;
    overwrite(&path, offset, &frame::padding(len))?;
    let hint = path.with_extension("hint");
    match std::fs::remove_file(&hint) {
        Ok(()) => keel_store::fsutil::fsync_dir(path.parent().unwrap_or(Path::new(".")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsckError::io("remove hint", hint, e)),
    }
    Ok(())
}

/// Flips one to eight bits of a blob's bytes and rewrites the record's
/// checksums: the frame stays valid, only the hash check fails.
fn flip_bits(store: &Store, hash: &Hash, rng: &mut ChaCha8Rng) -> Result<(), FsckError> {
    let (path, offset, len) = record_of(store, hash)?;
    let mut bytes = store.pack().get_unverified(hash)?;
    if bytes.is_empty() {
        return delete_blob(store, hash);
    }
    for _ in 0..rng.gen_range(1..=8) {
        let at = rng.gen_range(0..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..8);
    }
    if Hash::of(&bytes) == *hash {
        bytes[0] ^= 1; // the flips cancelled out
    }
    let mut record = Vec::with_capacity(len);
    frame::encode_parts(KIND_BLOB, &[hash.as_bytes(), &bytes], &mut record);
    assert_eq!(
        record.len(),
        len,
        "a re-framed blob keeps its record length"
    );
    overwrite(&path, offset, &record)
}
