//! Reading what survives of a damaged tree: readable entries of a
//! directory whose nodes are partly unreadable, the readable values of a
//! whole tree, and the surviving chunks of a damaged value.
//!
//! Everything here reads only; nothing is written.

use std::collections::BTreeMap;

use keel_store::object::{decode_chunk_list, Entry, EntryValue, Link, Node};
use keel_store::tree::Objects;
use keel_store::Hash;

use crate::finding::child_path;

/// The readable entries of the directory rooted at `root`, sorted by name
/// with each name once. Unreadable nodes are skipped (their entries lost);
/// `None` when the root node itself is unreadable.
pub fn readable_entries(objects: &Objects, root: &Link) -> Option<Vec<Entry>> {
    let cell = objects.resolve(root).ok()?;
    let mut out = Vec::new();
    collect(objects, &cell.node, &mut out);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    Some(out)
}

fn collect(objects: &Objects, node: &Node, out: &mut Vec<Entry>) {
    match node {
        Node::Leaf(leaf) => out.extend(leaf.entries.iter().cloned()),
        Node::Branch(branch) => {
            for child in &branch.children {
                if let Ok(cell) = objects.resolve(&child.link) {
                    // A child must be one level down; anything else is damage
                    // and descending into it could go on without bound.
                    if cell.node.level() < branch.level {
                        collect(objects, &cell.node, out);
                    }
                }
            }
        }
    }
}

/// An identity for a value, to tell whether two trees hold the same value at a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ValueId {
    Inline(Hash),
    Blob(Hash),
    Chunked(Hash),
}

impl ValueId {
    pub fn of(value: &EntryValue) -> Option<ValueId> {
        match value {
            EntryValue::Inline(bytes) => Some(ValueId::Inline(Hash::of(bytes))),
            EntryValue::Blob { hash, .. } => Some(ValueId::Blob(*hash)),
            EntryValue::Chunked { list, .. } => Some(ValueId::Chunked(*list)),
            EntryValue::Dir { .. } => None,
        }
    }
}

/// Every value the tree rooted at `root` can list (directories whose nodes
/// are unreadable are skipped), by key. Values are not read.
pub fn readable_values(objects: &Objects, root: &Link) -> BTreeMap<String, (Entry, ValueId)> {
    let mut out = BTreeMap::new();
    values_into(objects, root, "", 0, &mut out);
    out
}

fn values_into(
    objects: &Objects,
    dir: &Link,
    path: &str,
    depth: usize,
    out: &mut BTreeMap<String, (Entry, ValueId)>,
) {
    if depth > keel_store::key::KEY_SEGMENTS_MAX {
        return;
    }
    let Some(entries) = readable_entries(objects, dir) else {
        return;
    };
    for entry in entries {
        let key = child_path(path, &entry.name);
        match &entry.value {
            EntryValue::Dir { root, .. } => values_into(objects, root, &key, depth + 1, out),
            value => {
                let id = ValueId::of(value).expect("not a directory");
                out.insert(key, (entry, id));
            }
        }
    }
}

/// The data chunks of a value that can still be read and verified, in
/// order, with their lengths. Unreadable chunk lists drop the chunks below them.
pub fn surviving_chunks(objects: &Objects, value: &EntryValue) -> Vec<(Hash, u64)> {
    let mut out = Vec::new();
    match value {
        EntryValue::Blob { hash, .. } => keep_if_readable(objects, *hash, &mut out),
        EntryValue::Chunked { list, .. } => expand(objects, *list, u8::MAX, &mut out),
        EntryValue::Inline(_) | EntryValue::Dir { .. } => {}
    }
    out
}

fn keep_if_readable(objects: &Objects, hash: Hash, out: &mut Vec<(Hash, u64)>) {
    if let Ok(bytes) = objects.pack.get(&hash) {
        out.push((hash, bytes.len() as u64));
    }
}

/// Expands a chunk list whose level must be below `above`.
fn expand(objects: &Objects, list: Hash, above: u8, out: &mut Vec<(Hash, u64)>) {
    let Ok(bytes) = objects.pack.get(&list) else {
        return;
    };
    let Ok(decoded) = decode_chunk_list(&bytes) else {
        return;
    };
    if decoded.level >= above {
        return;
    }
    for (hash, _) in decoded.entries {
        if decoded.level == 0 {
            keep_if_readable(objects, hash, out);
        } else {
            expand(objects, hash, decoded.level, out);
        }
    }
}
