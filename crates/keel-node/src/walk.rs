//! The walk over the objects of a tree that both catch-up ([`crate::fetch`])
//! and the background scrub ([`crate::scrub`]) use: every object is read
//! from the pack and hashed, never taken from the node cache, so what the
//! walk calls intact is intact on disk.
//!
//! - Depth first, with an explicit stack: memory is bounded by the depth of
//!   the tree times the widest node, not by the size of a level.
//! - Each object is visited once per walk (a blob shared by many keys is read
//!   once), but every key path that reaches a damaged object is remembered
//!   (up to [`PATHS_PER_BLOB_MAX`]), so the keys it affects can be named.
//! - Damage never stops the walk: a missing, corrupt or undecodable object
//!   is set aside ([`Walk::take_found`]) and the walk goes on with the rest.
//!   Once the caller has replaced it, [`Walk::revisit`] walks beneath it.
//! - Only I/O failures (not damage) end a step with an error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use keel_store::object::{decode_chunk_list, decode_node, EntryValue, Node};
use keel_store::pack::Pack;
use keel_store::{Hash, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Key paths remembered per damaged blob (the count goes on beyond it).
pub const PATHS_PER_BLOB_MAX: usize = 16;
/// The path of the root directory.
pub const ROOT_PATH: &str = "/";

/// What an object is to the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    DirectoryNode,
    ChunkList,
    Chunk,
}

/// How an object is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Damage {
    /// Not in the pack.
    Missing,
    /// Its bytes do not hash to its name.
    Corrupt,
    /// It hashes to its name but does not decode as what refers to it. Every
    /// replica holds the same bytes, so no peer can repair it.
    Undecodable,
}

impl Damage {
    /// The blob and the damage a store error reports, if it reports damage
    /// to one blob.
    pub fn of(error: &StoreError) -> Option<(Hash, Damage)> {
        match error {
            StoreError::MissingBlob { hash } => Some((*hash, Damage::Missing)),
            StoreError::CorruptBlob { hash, .. } => Some((*hash, Damage::Corrupt)),
            StoreError::Undecodable { hash, .. } => Some((*hash, Damage::Undecodable)),
            _ => None,
        }
    }

    /// Whether a verified copy from a peer can repair it.
    pub fn repairable(self) -> bool {
        self != Damage::Undecodable
    }

    pub fn describe(self) -> &'static str {
        match self {
            Damage::Missing => "missing",
            Damage::Corrupt => "corrupt",
            Damage::Undecodable => "undecodable",
        }
    }
}

/// An object to visit, and how the walk got there.
#[derive(Clone, Debug)]
pub struct Visit {
    pub hash: Hash,
    pub kind: ObjectKind,
    /// The key path: a value's key for its chunk lists and chunks, a
    /// directory's path for its nodes (`/` for the root directory).
    pub path: Arc<str>,
    /// Which of the walk's roots reached it (the order of [`Walk::push_root`]).
    pub tree: usize,
}

/// A damaged object the walk set aside.
#[derive(Clone, Debug)]
pub struct Found {
    pub visit: Visit,
    pub damage: Damage,
    /// What the store said about it.
    pub detail: String,
}

/// Key paths that reached a damaged blob.
#[derive(Clone, Debug, Default)]
pub struct Paths {
    pub paths: Vec<String>,
    pub total: u64,
}

/// A walk over one or more trees; see the module docs.
#[derive(Default)]
pub struct Walk {
    stack: Vec<Visit>,
    seen: HashSet<Hash>,
    found: Vec<Found>,
    damaged: HashMap<Hash, Paths>,
    /// Objects read and found intact.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Walk {
    pub fn new() -> Walk {
        Walk::default()
    }

    /// Adds a tree to walk. Trees pushed later are walked first.
    pub fn push_root(&mut self, root: Hash, tree: usize) {
        self.stack.push(Visit {
            hash: root,
            kind: ObjectKind::DirectoryNode,
            path: Arc::from(ROOT_PATH),
            tree,
        });
    }

    /// True when every object has been visited.
    pub fn is_done(&self) -> bool {
        self.stack.is_empty()
    }

    /// Damaged objects set aside and not yet taken.
    pub fn found_count(&self) -> usize {
        self.found.len()
    }

    /// Takes the damaged objects set aside so far.
    pub fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }

    /// The key paths that reached a damaged blob so far.
    pub fn paths_of(&self, hash: &Hash) -> Paths {
        self.damaged.get(hash).cloned().unwrap_or_default()
    }

    /// Walks beneath an object again once it has been repaired.
    pub fn revisit(&mut self, visit: Visit) {
        self.damaged.remove(&visit.hash);
        self.seen.remove(&visit.hash);
        self.stack.push(visit);
    }

    /// Visits objects until at least `bytes_max` bytes were read, `found_max`
    /// damaged objects are set aside, or the walk is done. Fails only when
    /// the store fails (I/O), never on damage.
    pub fn step(
        &mut self,
        pack: &Pack,
        bytes_max: u64,
        found_max: usize,
    ) -> Result<(), StoreError> {
        let bytes_before = self.bytes;
        while self.bytes - bytes_before < bytes_max && self.found.len() < found_max {
            let Some(visit) = self.stack.pop() else {
                break;
            };
            if !self.seen.insert(visit.hash) {
                if let Some(paths) = self.damaged.get_mut(&visit.hash) {
                    note_path(paths, &visit.path);
                }
                continue;
            }
            // The empty directory needs no blob (see `tree::empty_dir_hash`).
            if visit.hash == keel_store::tree::empty_dir_hash() {
                continue;
            }
            let bytes = match pack.get(&visit.hash) {
                Ok(bytes) => bytes,
                Err(error) => match Damage::of(&error) {
                    Some((_, damage)) => {
                        self.set_aside(visit, damage, error.to_string());
                        continue;
                    }
                    None => return Err(error),
                },
            };
            match children(&visit, &bytes) {
                Ok(children) => {
                    self.objects += 1;
                    self.bytes += bytes.len() as u64;
                    self.stack.extend(children);
                }
                Err(reason) => self.set_aside(visit, Damage::Undecodable, reason),
            }
        }
        Ok(())
    }

    fn set_aside(&mut self, visit: Visit, damage: Damage, detail: String) {
        note_path(self.damaged.entry(visit.hash).or_default(), &visit.path);
        self.found.push(Found {
            visit,
            damage,
            detail,
        });
    }
}

/// [`Walk::step`] on a blocking thread: reading and hashing must not stall
/// the async workers. The walk is lost only when the step fails.
pub async fn step_blocking(
    mut walk: Walk,
    store: Store,
    bytes_max: u64,
    found_max: usize,
) -> anyhow::Result<Walk> {
    let walk = tokio::task::spawn_blocking(move || {
        walk.step(store.pack(), bytes_max, found_max).map(|()| walk)
    })
    .await??;
    Ok(walk)
}

fn note_path(paths: &mut Paths, path: &str) {
    paths.total += 1;
    if paths.paths.len() < PATHS_PER_BLOB_MAX && !paths.paths.iter().any(|p| p == path) {
        paths.paths.push(path.to_string());
    }
}

/// The path of an entry named `name` in the directory at `dir`.
pub fn child_path(dir: &str, name: &str) -> String {
    if dir == ROOT_PATH {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The objects an intact object refers to, or why it does not decode.
fn children(visit: &Visit, bytes: &[u8]) -> Result<Vec<Visit>, String> {
    let child = |hash: Hash, kind: ObjectKind, path: &Arc<str>| Visit {
        hash,
        kind,
        path: path.clone(),
        tree: visit.tree,
    };
    match visit.kind {
        ObjectKind::Chunk => Ok(Vec::new()),
        ObjectKind::ChunkList => {
            let list = decode_chunk_list(bytes)?;
            let kind = if list.level == 0 {
                ObjectKind::Chunk
            } else {
                ObjectKind::ChunkList
            };
            Ok(list
                .entries
                .iter()
                .map(|(hash, _)| child(*hash, kind, &visit.path))
                .collect())
        }
        ObjectKind::DirectoryNode => Ok(match decode_node(bytes)? {
            Node::Branch(branch) => branch
                .children
                .iter()
                .filter_map(|c| c.link.known_hash())
                .map(|hash| child(hash, ObjectKind::DirectoryNode, &visit.path))
                .collect(),
            Node::Leaf(leaf) => leaf
                .entries
                .iter()
                .filter_map(|entry| {
                    let (hash, kind) = match &entry.value {
                        EntryValue::Inline(_) => return None,
                        EntryValue::Blob { hash, .. } => (*hash, ObjectKind::Chunk),
                        EntryValue::Chunked { list, .. } => (*list, ObjectKind::ChunkList),
                        EntryValue::Dir { root, .. } => {
                            (root.known_hash()?, ObjectKind::DirectoryNode)
                        }
                    };
                    let path = Arc::from(child_path(&visit.path, entry.name.as_str()));
                    Some(child(hash, kind, &path))
                })
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_fsck::corrupt::{corrupt, Mode};
    use keel_store::{StoreOptions, Txn};

    fn init_with(dir: &std::path::Path, keys: &[(&str, Vec<u8>)]) -> Hash {
        let store = Store::init(dir, StoreOptions::default()).unwrap();
        let txns: Vec<Txn> = keys.iter().map(|(k, v)| Txn::put(*k, v.clone())).collect();
        store.commit(&txns).unwrap();
        let root = store.last_commit().unwrap().root;
        store.close().unwrap();
        root
    }

    fn walk_all(store: &Store, walk: &mut Walk) {
        while !walk.is_done() {
            walk.step(store.pack(), u64::MAX, usize::MAX).unwrap();
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed + 1;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn damage_is_set_aside_once_with_every_key_that_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let shared = pseudo_random(4096, 2);
        let root = init_with(
            dir.path(),
            &[
                ("a/big", pseudo_random(600 * 1024, 1)),
                ("a/one", shared.clone()),
                ("b/two", shared.clone()),
                ("b/small", b"inline".to_vec()),
            ],
        );
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut clean = Walk::new();
        clean.push_root(root, 0);
        walk_all(&store, &mut clean);
        assert!(clean.take_found().is_empty());
        assert!(clean.bytes >= 600 * 1024 + 4096, "every chunk is read");
        store.close().unwrap();

        let report = corrupt(dir.path(), Mode::FlipBits, Some("a/one"), 1, 7).unwrap();
        assert_eq!(report.damaged[0].blob, Hash::of(&shared));
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut walk = Walk::new();
        walk.push_root(root, 0);
        walk_all(&store, &mut walk);
        let found = walk.take_found();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].visit.hash, Hash::of(&shared));
        assert_eq!(found[0].damage, Damage::Corrupt);
        assert_eq!(found[0].visit.kind, ObjectKind::Chunk);
        let mut paths = walk.paths_of(&Hash::of(&shared)).paths;
        paths.sort();
        assert_eq!(paths, vec!["a/one".to_string(), "b/two".to_string()]);
        assert_eq!(walk.objects, clean.objects - 1);
    }

    #[test]
    fn beneath_a_repaired_directory_the_walk_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let value = pseudo_random(3000, 3);
        let root = init_with(
            dir.path(),
            &[("d/e/k", value.clone()), ("x", b"1".to_vec())],
        );
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        // Every blob's bytes, to put one back later as a peer would.
        let saved: HashMap<Hash, bytes::Bytes> = store
            .pack()
            .blobs()
            .iter()
            .map(|(hash, _)| (*hash, store.pack().get(hash).unwrap()))
            .collect();
        let objects_in_tree = {
            let mut walk = Walk::new();
            walk.push_root(root, 0);
            walk_all(&store, &mut walk);
            walk.objects
        };
        store.close().unwrap();
        let report = corrupt(dir.path(), Mode::DeleteDir, Some("d"), 1, 1).unwrap();
        let deleted = report.damaged[0].blob;
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut walk = Walk::new();
        walk.push_root(root, 3);
        walk_all(&store, &mut walk);
        let found = walk.take_found();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].damage, Damage::Missing);
        assert_eq!(found[0].visit.tree, 3);
        assert_eq!(&*found[0].visit.path, "d");
        assert_eq!(walk.objects, 1, "only the root was readable");

        // Put back the one blob (as a peer's verified copy would be), then
        // the walk continues beneath it down to the value's chunk.
        store
            .import_blobs(&[(deleted, saved[&deleted].clone())], true)
            .unwrap();
        walk.revisit(found[0].visit.clone());
        walk_all(&store, &mut walk);
        assert!(walk.take_found().is_empty());
        assert_eq!(
            walk.objects, objects_in_tree,
            "every object read once in all"
        );
        assert_eq!(
            walk.paths_of(&deleted).total,
            0,
            "repaired blobs are forgotten"
        );
    }

    #[test]
    fn an_object_of_the_wrong_type_is_undecodable_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = pseudo_random(5000, 4);
        init_with(dir.path(), &[("k", chunk.clone())]);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut walk = Walk::new();
        walk.stack.push(Visit {
            hash: Hash::of(&chunk),
            kind: ObjectKind::DirectoryNode,
            path: Arc::from("k"),
            tree: 0,
        });
        walk_all(&store, &mut walk);
        let found = walk.take_found();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].damage, Damage::Undecodable);
        assert!(!found[0].damage.repairable());
    }

    #[test]
    fn a_step_stops_after_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let root = init_with(
            dir.path(),
            &[
                ("a", pseudo_random(200 * 1024, 5)),
                ("b", pseudo_random(200 * 1024, 6)),
            ],
        );
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut walk = Walk::new();
        walk.push_root(root, 0);
        walk.step(store.pack(), 1, usize::MAX).unwrap();
        assert_eq!(walk.objects, 1, "one object, then the budget is spent");
        assert!(!walk.is_done());
        walk_all(&store, &mut walk);
        assert!(walk.objects > 2);
    }
}
