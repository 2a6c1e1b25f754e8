//! Operations on the Merkle tree: HAMT directories, paths, values, flushing.
//!
//! Trees are persistent: a change builds new nodes for its path (and for the
//! few neighbours a changed boundary pulls in) and shares every other node,
//! so a reader holding an older root keeps a consistent view for free. New
//! nodes have no hash until [`flush`] encodes them, children first, into a
//! [`PackBatch`]; many changes can share one flush.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::error::{Result, StoreError};
use crate::hash::Hash;
use crate::object::{
    decode_chunk_list, decode_node, encode_chunk_list, encode_node, node_references, BlobKind,
    Branch, Child, ChunkList, Entry, EntryValue, Leaf, Link, Name, NameKey, Node, NodeCell,
    CHUNK_BYTES_AVERAGE, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, CHUNK_LIST_ENTRIES_MAX,
    INLINE_VALUE_BYTES_MAX, ITEMS_MAX,
};
use crate::pack::{HashMapByHash, Pack, PackBatch};

#[derive(Clone)]
struct NodeWeight;

impl Weighter<Hash, Arc<NodeCell>> for NodeWeight {
    fn weight(&self, _key: &Hash, cell: &Arc<NodeCell>) -> u64 {
        match &cell.node {
            Node::Leaf(leaf) => {
                let entries: usize = leaf
                    .entries
                    .iter()
                    .map(|e| {
                        96 + e.name.len()
                            + match &e.value {
                                EntryValue::Inline(b) => b.len(),
                                _ => 0,
                            }
                    })
                    .sum();
                (96 + entries) as u64
            }
            Node::Branch(branch) => {
                (96 + branch
                    .children
                    .iter()
                    .map(|c| 64 + c.last.len())
                    .sum::<usize>()) as u64
            }
        }
    }
}

/// The pack plus a cache of decoded, verified directory nodes.
pub struct Objects {
    pub pack: Pack,
    nodes: Cache<
        Hash,
        Arc<NodeCell>,
        NodeWeight,
        std::hash::BuildHasherDefault<crate::pack::HashPrefixHasher>,
    >,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("pack", &self.pack)
            .finish_non_exhaustive()
    }
}

impl Objects {
    pub fn new(pack: Pack, cache_bytes: u64) -> Objects {
        let items = (cache_bytes / 2048).max(64) as usize;
        Objects {
            pack,
            nodes: Cache::with(
                items,
                cache_bytes.max(1),
                NodeWeight,
                Default::default(),
                Default::default(),
            ),
        }
    }

    /// Loads a directory node through the cache.
    pub fn node(&self, hash: &Hash) -> Result<Arc<NodeCell>> {
        if let Some(cell) = self.nodes.get(hash) {
            return Ok(cell);
        }
        let cell = Arc::new(self.read_node(hash)?);
        if *hash != empty_dir_hash() {
            self.nodes.insert(*hash, cell.clone());
        }
        Ok(cell)
    }

    /// Reads a directory node past the cache, verifying its hash and
    /// decoding it. The empty directory is implicit: it needs no blob and so
    /// can never be missing.
    fn read_node(&self, hash: &Hash) -> Result<NodeCell> {
        let node = if *hash == empty_dir_hash() {
            Node::Leaf(Leaf {
                entries: Vec::new(),
            })
        } else {
            let bytes = self.pack.get(hash)?;
            decode_node(&bytes).map_err(|reason| StoreError::Undecodable {
                what: "directory node",
                hash: *hash,
                reason,
            })?
        };
        Ok(NodeCell::stored(node, *hash))
    }

    /// A copy of the node at `link` for the writer to edit. The version it
    /// replaces leaves the cache, whose place goes to nodes still in use
    /// (only a reader of an older state may want it again, and the pack
    /// still holds it); one read from the pack is not cached at all.
    pub fn copy_for_edit(&self, link: &Link) -> Result<Node> {
        let cached = link
            .known_hash()
            .and_then(|hash| self.nodes.remove(&hash))
            .map(|(_, cell)| cell);
        match (link, cached) {
            (Link::Loaded(cell), _) => Ok(cell.node.clone()),
            (Link::Stored(_), Some(cell)) => Ok(cell.node.clone()),
            (Link::Stored(hash), None) => Ok(self.read_node(hash)?.node),
        }
    }

    pub fn resolve(&self, link: &Link) -> Result<Arc<NodeCell>> {
        match link {
            Link::Stored(hash) => self.node(hash),
            Link::Loaded(cell) => Ok(cell.clone()),
        }
    }

    /// Loads a chunk list, verifying and decoding it.
    pub fn chunk_list(&self, hash: &Hash) -> Result<ChunkList> {
        let bytes = self.pack.get(hash)?;
        decode_chunk_list(&bytes).map_err(|reason| StoreError::Undecodable {
            what: "chunk list",
            hash: *hash,
            reason,
        })
    }

    /// Forgets every cached node (after a rollback or repair rewrote history).
    pub fn clear_cache(&self) {
        self.nodes.clear();
    }
}

// ---------------------------------------------------------------- directories

/// Number of direct entries of the directory rooted at `root`.
pub fn dir_count(objects: &Objects, root: &Link) -> Result<u64> {
    Ok(objects.resolve(root)?.node.count())
}

/// Index of the child whose range holds `name`, if any does.
fn child_for(children: &[Child], name: &str) -> Option<usize> {
    child_for_key(children, &NameKey::new(name))
}

fn child_for_key(children: &[Child], key: &NameKey<'_>) -> Option<usize> {
    let i = children.partition_point(|c| c.last.cmp_key(key) == std::cmp::Ordering::Less);
    (i < children.len()).then_some(i)
}

/// The entry `name` of the directory rooted at `root`.
pub fn dir_get(objects: &Objects, root: &Link, name: &str) -> Result<Option<Entry>> {
    dir_find(objects, root, name, |entry| entry.clone())
}

/// `found` applied to the entry `name` of the directory rooted at `root`
/// (a descent through the branches to the one leaf that may hold it).
fn dir_find<T>(
    objects: &Objects,
    root: &Link,
    name: &str,
    found: impl FnOnce(&Entry) -> T,
) -> Result<Option<T>> {
    let key = NameKey::new(name);
    let mut cell = objects.resolve(root)?;
    loop {
        let next = match &cell.node {
            Node::Leaf(leaf) => {
                return Ok(leaf
                    .entries
                    .binary_search_by(|e| e.name.cmp_key(&key))
                    .ok()
                    .map(|i| found(&leaf.entries[i])))
            }
            Node::Branch(branch) => match child_for_key(&branch.children, &key) {
                Some(i) => objects.resolve(&branch.children[i].link)?,
                None => return Ok(None),
            },
        };
        cell = next;
    }
}

/// Every entry of the directory rooted at `root`, in name order.
pub fn dir_entries(objects: &Objects, root: &Link) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    collect_entries(objects, root, &mut out)?;
    Ok(out)
}

fn collect_entries(objects: &Objects, link: &Link, out: &mut Vec<Entry>) -> Result<()> {
    let cell = objects.resolve(link)?;
    match &cell.node {
        Node::Leaf(leaf) => out.extend(leaf.entries.iter().cloned()),
        Node::Branch(branch) => {
            for child in &branch.children {
                collect_entries(objects, &child.link, out)?;
            }
        }
    }
    Ok(())
}

/// The new value of one entry, computed from the old one when the rebuild
/// reaches it; `None` removes the entry.
type EditFn<'a> = dyn FnMut(Option<&Entry>) -> Result<Option<Entry>> + 'a;

/// Rebuilds a directory with one entry edited: `edit` gets the current entry
/// (if any) and returns the new one (or `None` to remove it). Nothing of the
/// old tree changes; the result shares every untouched subtree with it.
pub fn update(objects: &Objects, root: &Link, name: &str, edit: &mut EditFn<'_>) -> Result<Link> {
    let mut builder = Builder::default();
    let cell = objects.resolve(root)?;
    let level = cell.node.level();
    builder.descend(objects, &cell, level, Some((name, edit)))?;
    builder.finish(objects)
}

/// Re-chunks the items of every level as a rebuild streams them in,
/// bottom-up: a finished node at level L becomes an item of level L + 1.
///
/// Invariant: chunking restarts at every cut, so an untouched node that
/// ends with a cut can be reused whole whenever no items are pending at its
/// level or below (`is_fresh`), which is what keeps a rebuild O(log n).
#[derive(Default)]
struct Builder {
    /// Pending entries of the level-0 node being built.
    entries: Vec<Entry>,
    /// Pending children of the level-(i + 1) node being built.
    children: Vec<Vec<Child>>,
    /// Nodes finished (built or reused) per level.
    emitted: Vec<u64>,
}

impl Builder {
    fn is_fresh(&self, level: u8) -> bool {
        self.entries.is_empty()
            && self
                .children
                .iter()
                .take(level as usize)
                .all(|c| c.is_empty())
    }

    fn count_emitted(&mut self, level: u8) {
        let level = level as usize;
        if self.emitted.len() <= level {
            self.emitted.resize(level + 1, 0);
        }
        self.emitted[level] += 1;
    }

    fn push_entry(&mut self, entry: Entry) {
        let cut = entry.name.is_boundary(0) || self.entries.len() + 1 >= ITEMS_MAX;
        self.entries.push(entry);
        if cut {
            self.cut_leaf();
        }
    }

    fn cut_leaf(&mut self) {
        let entries = std::mem::take(&mut self.entries);
        let last = entries.last().expect("a cut leaf has entries").name.clone();
        let count = entries.len() as u64;
        let link = Link::Loaded(Arc::new(NodeCell::new(Node::Leaf(Leaf { entries }))));
        self.count_emitted(0);
        self.push_child(1, Child { last, count, link });
    }

    /// Adds a finished level-(level - 1) node as an item of `level`.
    fn push_child(&mut self, level: u8, child: Child) {
        let index = level as usize - 1;
        if self.children.len() <= index {
            self.children.resize_with(index + 1, Vec::new);
        }
        let cut = child.last.is_boundary(level) || self.children[index].len() + 1 >= ITEMS_MAX;
        self.children[index].push(child);
        if cut {
            self.cut_branch(level);
        }
    }

    fn cut_branch(&mut self, level: u8) {
        let children = std::mem::take(&mut self.children[level as usize - 1]);
        let last = children
            .last()
            .expect("a cut branch has children")
            .last
            .clone();
        let count = children.iter().map(|c| c.count).sum();
        let link = Link::Loaded(Arc::new(NodeCell::new(Node::Branch(Branch {
            level,
            children,
        }))));
        self.count_emitted(level);
        self.push_child(level + 1, Child { last, count, link });
    }

    /// Streams a child (a level-`level` node) into the rebuild: whole when
    /// it is untouched and ends with a cut, else item by item.
    fn visit(
        &mut self,
        objects: &Objects,
        child: &Child,
        level: u8,
        edit: Option<(&str, &mut EditFn<'_>)>,
    ) -> Result<()> {
        if edit.is_none() && self.is_fresh(level) {
            let ends_with_cut = child.last.is_boundary(level)
                || objects.resolve(&child.link)?.node.items() >= ITEMS_MAX;
            if ends_with_cut {
                self.count_emitted(level);
                self.push_child(level + 1, child.clone());
                return Ok(());
            }
        }
        let cell = objects.resolve(&child.link)?;
        self.descend(objects, &cell, level, edit)
    }

    /// Streams the items of `cell` (a level-`level` node), applying `edit`
    /// where its name falls.
    fn descend(
        &mut self,
        objects: &Objects,
        cell: &NodeCell,
        level: u8,
        edit: Option<(&str, &mut EditFn<'_>)>,
    ) -> Result<()> {
        match &cell.node {
            Node::Leaf(leaf) => {
                let Some((name, edit)) = edit else {
                    for entry in &leaf.entries {
                        self.push_entry(entry.clone());
                    }
                    return Ok(());
                };
                let position = leaf.entries.binary_search_by(|e| e.name.as_str().cmp(name));
                let (before, existing, after) = match position {
                    Ok(i) => (i, Some(&leaf.entries[i]), i + 1),
                    Err(i) => (i, None, i),
                };
                let replacement = edit(existing)?;
                for entry in &leaf.entries[..before] {
                    self.push_entry(entry.clone());
                }
                if let Some(entry) = replacement {
                    assert_eq!(
                        entry.name.as_str(),
                        name,
                        "an edit must keep the entry's name"
                    );
                    self.push_entry(entry);
                }
                for entry in &leaf.entries[after..] {
                    self.push_entry(entry.clone());
                }
                Ok(())
            }
            Node::Branch(branch) => {
                // Names past the last child belong to the last child.
                let target = edit.as_ref().map(|(name, _)| {
                    child_for(&branch.children, name).unwrap_or(branch.children.len() - 1)
                });
                let mut edit = edit;
                for (i, child) in branch.children.iter().enumerate() {
                    let this = if Some(i) == target { edit.take() } else { None };
                    self.visit(objects, child, level - 1, this)?;
                }
                Ok(())
            }
        }
    }

    /// Closes every pending node and returns the root.
    ///
    /// Closing goes up level by level until one item remains with nothing
    /// above it: the top. The canonical root is the lowest single node, so
    /// the top's chain of single-child branches (made by a cut that carried
    /// a lone node up, or reused whole) is skipped.
    fn finish(mut self, objects: &Objects) -> Result<Link> {
        if !self.entries.is_empty() {
            let entries = std::mem::take(&mut self.entries);
            self.close(0, Node::Leaf(Leaf { entries }));
        }
        let mut level = 0usize;
        let top = loop {
            let pending = self.children.get(level).map_or(0, |c| c.len());
            let emitted_above = self.emitted.get(level + 1).copied().unwrap_or(0);
            let nothing_above = emitted_above == 0 && self.higher_levels_empty(level + 1);
            if pending == 0 && nothing_above {
                assert_eq!(level, 0, "a level with nodes hands them to the level above");
                return Ok(Link::empty_dir());
            }
            if pending == 1 && nothing_above {
                break self.children[level].pop().expect("one pending item").link;
            }
            if pending > 0 {
                let children = std::mem::take(&mut self.children[level]);
                let branch_level = level as u8 + 1;
                self.close(
                    branch_level,
                    Node::Branch(Branch {
                        level: branch_level,
                        children,
                    }),
                );
            }
            level += 1;
        };
        let mut root = top;
        loop {
            let cell = objects.resolve(&root)?;
            match &cell.node {
                Node::Branch(branch) if branch.children.len() == 1 => {
                    root = branch.children[0].link.clone()
                }
                _ => return Ok(root),
            }
        }
    }

    fn higher_levels_empty(&self, level: usize) -> bool {
        self.children.iter().skip(level).all(|c| c.is_empty())
    }

    /// Closes the last node of `level` (it need not end with a cut) and
    /// queues it as an item of the level above.
    fn close(&mut self, level: u8, node: Node) {
        let last = node.last_name().expect("a closed node has items").clone();
        let count = node.count();
        let link = Link::Loaded(Arc::new(NodeCell::new(node)));
        self.count_emitted(level);
        let index = level as usize;
        if self.children.len() <= index {
            self.children.resize_with(index + 1, Vec::new);
        }
        self.children[index].push(Child { last, count, link });
    }
}

// ---------------------------------------------------------------- paths

/// Looks up a key (given as names) from the root directory.
pub fn get_path(objects: &Objects, root: &Link, names: &[&str]) -> Result<Option<Entry>> {
    let Some((last, parents)) = names.split_last() else {
        return Err(StoreError::InvalidKey {
            key: String::new(),
            reason: "empty key".into(),
        });
    };
    let mut dir = root.clone();
    for (depth, name) in parents.iter().enumerate() {
        match dir_get(objects, &dir, name)? {
            Some(Entry {
                value: EntryValue::Dir { root, .. },
                ..
            }) => dir = root,
            Some(_) => {
                return Err(StoreError::NotADirectory {
                    path: names[..=depth].join("/"),
                })
            }
            None => return Ok(None),
        }
    }
    dir_get(objects, &dir, last)
}

/// The root link of the directory at `names` (`names` empty: the root).
pub fn get_dir(objects: &Objects, root: &Link, names: &[&str]) -> Result<Option<Link>> {
    if names.is_empty() {
        return Ok(Some(root.clone()));
    }
    match get_path(objects, root, names)? {
        Some(Entry {
            value: EntryValue::Dir { root, .. },
            ..
        }) => Ok(Some(root)),
        Some(_) => Err(StoreError::NotADirectory {
            path: names.join("/"),
        }),
        None => Ok(None),
    }
}

// In-place edits. A node is private when it is in memory, has no hash yet
// and nothing else holds it: the writer built it for the change under way.
// Edits that move no boundary change private nodes in place; everything
// else goes through `update`, which is always correct.

fn private_node(link: &mut Link) -> Option<&mut Node> {
    match link {
        Link::Loaded(cell) if cell.hash().is_none() => {
            Arc::get_mut(cell).map(|cell| &mut cell.node)
        }
        _ => None,
    }
}

/// The entry `name`, when every node on its path is private.
fn entry_in_place<'a>(link: &'a mut Link, name: &str) -> Option<&'a mut Entry> {
    match private_node(link)? {
        Node::Leaf(leaf) => {
            let i = leaf
                .entries
                .binary_search_by(|e| e.name.as_str().cmp(name))
                .ok()?;
            Some(&mut leaf.entries[i])
        }
        Node::Branch(branch) => {
            let i = child_for(&branch.children, name)?;
            entry_in_place(&mut branch.children[i].link, name)
        }
    }
}

/// Replaces a node that is flushed or shared by a private copy of it (same
/// items, no hash yet), so that it can be edited in place; a private node
/// stays as it is.
fn make_private<'a>(objects: &Objects, link: &'a mut Link) -> Result<&'a mut Node> {
    if private_node(link).is_none() {
        let copy = objects.copy_for_edit(link)?;
        *link = Link::Loaded(Arc::new(NodeCell::new(copy)));
    }
    Ok(private_node(link).expect("a node just copied is private"))
}

/// The existing entry `name`, with every node on its path made private
/// (path copying: each flushed or shared node on the way is copied once).
/// Editing the entry's value or revision then changes only this tree, and
/// keeps its shape canonical: boundaries depend on names and counts alone,
/// and neither changes. `None` when `name` is absent; the path to where it
/// belongs is private then too, ready for [`insert_in_place`].
///
/// This is the cheap path for the commonest write, an overwrite: it copies
/// O(depth) nodes where a rebuild (`update`) streams every item of them.
/// It descends once: a lookup first and a copying descent after it walked
/// the same path twice, and the first walk's cache misses were most of an
/// apply's time.
fn existing_entry_copied<'a>(
    objects: &Objects,
    link: &'a mut Link,
    name: &str,
) -> Result<Option<&'a mut Entry>> {
    let key = NameKey::new(name);
    let leaf = private_leaf(objects, link, &key)?;
    Ok(leaf
        .entries
        .binary_search_by(|e| e.name.cmp_key(&key))
        .ok()
        .map(|i| &mut leaf.entries[i]))
}

/// Makes every node on the path to where `key` is or belongs private (the
/// path [`insert_in_place`] takes) and returns the leaf at its end.
fn private_leaf<'a>(objects: &Objects, link: &'a mut Link, key: &NameKey) -> Result<&'a mut Leaf> {
    let mut link = link;
    loop {
        match make_private(objects, link)? {
            Node::Leaf(leaf) => return Ok(leaf),
            Node::Branch(branch) => {
                let i = child_for_key(&branch.children, key).unwrap_or(branch.children.len() - 1);
                link = &mut branch.children[i].link;
            }
        }
    }
}

/// Inserts a new entry in place when that moves no boundary; gives the
/// entry back otherwise. The caller knows the name is absent.
fn insert_in_place(link: &mut Link, entry: Entry) -> Option<Entry> {
    let Some(node) = private_node(link) else {
        return Some(entry);
    };
    match node {
        Node::Leaf(leaf) => {
            let i = leaf.entries.partition_point(|e| e.name < entry.name);
            let appended = i == leaf.entries.len();
            let moves_boundary = if appended {
                // Only the level's last leaf is appended to; its old last
                // entry must not be a cut, or the new one starts a new leaf.
                leaf.entries
                    .last()
                    .is_some_and(|last| last.name.is_boundary(0))
            } else {
                entry.name.is_boundary(0)
            };
            if moves_boundary || leaf.entries.len() + 1 >= ITEMS_MAX {
                return Some(entry);
            }
            // One more slot, not double: leaves live as long as the tree, and
            // a doubled capacity per inserted-into leaf cost about a tenth of
            // a node's memory with 1,000,000 keys.
            leaf.entries.reserve_exact(1);
            leaf.entries.insert(i, entry);
            None
        }
        Node::Branch(branch) => {
            let i = child_for(&branch.children, &entry.name).unwrap_or(branch.children.len() - 1);
            let name = entry.name.clone();
            let refused = insert_in_place(&mut branch.children[i].link, entry);
            if refused.is_none() {
                let child = &mut branch.children[i];
                child.count += 1;
                if name > child.last {
                    child.last = name;
                }
            }
            refused
        }
    }
}

/// Removes an entry in place when that moves no boundary (it is not the
/// last of its leaf, and the leaf was not cut by the item limit).
fn remove_in_place(link: &mut Link, name: &str) -> bool {
    let Some(node) = private_node(link) else {
        return false;
    };
    match node {
        Node::Leaf(leaf) => {
            let Ok(i) = leaf.entries.binary_search_by(|e| e.name.as_str().cmp(name)) else {
                return false;
            };
            if i + 1 == leaf.entries.len() || leaf.entries.len() >= ITEMS_MAX {
                return false;
            }
            leaf.entries.remove(i);
            true
        }
        Node::Branch(branch) => {
            let Some(i) = child_for(&branch.children, name) else {
                return false;
            };
            let removed = remove_in_place(&mut branch.children[i].link, name);
            if removed {
                branch.children[i].count -= 1;
            }
            removed
        }
    }
}

/// Sets the value at a key, creating parent directories, and returns the
/// entry it replaced. Errors (changing nothing visible) if a parent is a
/// value or the key is a directory.
pub fn put_path(
    objects: &Objects,
    root: &mut Link,
    names: &[&str],
    value: EntryValue,
    revision: u64,
) -> Result<Option<Entry>> {
    put_at(objects, root, names, 0, &value, revision)
}

fn put_at(
    objects: &Objects,
    dir: &mut Link,
    names: &[&str],
    at: usize,
    value: &EntryValue,
    revision: u64,
) -> Result<Option<Entry>> {
    let name = names[at];
    let last = at + 1 == names.len();
    if let Some(existing) = existing_entry_copied(objects, dir, name)? {
        if last {
            if existing.value.is_dir() && !value.is_dir() {
                return Err(StoreError::IsADirectory {
                    path: names.join("/"),
                });
            }
            existing.revision = revision;
            let old = std::mem::replace(&mut existing.value, value.clone());
            return Ok(Some(Entry {
                name: existing.name.clone(),
                revision,
                value: old,
            }));
        }
        let EntryValue::Dir { root, count } = &mut existing.value else {
            return Err(StoreError::NotADirectory {
                path: names[..=at].join("/"),
            });
        };
        let replaced = put_at(objects, root, names, at + 1, value, revision)?;
        *count = dir_count(objects, root)?;
        existing.revision = revision;
        return Ok(replaced);
    }
    if last {
        // A new name: the path to where it goes is private (the lookup above
        // copied it); insert in place unless that moves a boundary. A refused
        // insert leaves only private copies of unchanged nodes behind.
        let entry = Entry {
            name: Name::new(name),
            revision,
            value: value.clone(),
        };
        if insert_in_place(dir, entry).is_none() {
            return Ok(None);
        }
    }
    let mut replaced = None;
    *dir = update(objects, dir, name, &mut |existing| {
        if last {
            if existing.is_some_and(|e| e.value.is_dir()) && !value.is_dir() {
                return Err(StoreError::IsADirectory {
                    path: names.join("/"),
                });
            }
            replaced = existing.cloned();
            return Ok(Some(Entry {
                name: Name::new(name),
                revision,
                value: value.clone(),
            }));
        }
        let mut child = match existing.map(|e| &e.value) {
            None => Link::empty_dir(),
            Some(EntryValue::Dir { root, .. }) => root.clone(),
            Some(_) => {
                return Err(StoreError::NotADirectory {
                    path: names[..=at].join("/"),
                })
            }
        };
        replaced = put_at(objects, &mut child, names, at + 1, value, revision)?;
        let count = dir_count(objects, &child)?;
        Ok(Some(Entry {
            name: Name::new(name),
            revision,
            value: EntryValue::Dir { root: child, count },
        }))
    })?;
    Ok(replaced)
}

/// Removes the entry at a key (a value, or with `allow_dir` a whole
/// directory) and prunes directories it leaves empty. Returns the removed entry.
pub fn remove_path(
    objects: &Objects,
    root: &mut Link,
    names: &[&str],
    allow_dir: bool,
    revision: u64,
) -> Result<Option<Entry>> {
    let removed = match get_path(objects, root, names)? {
        None => return Ok(None),
        Some(entry) if entry.value.is_dir() && !allow_dir => {
            return Err(StoreError::IsADirectory {
                path: names.join("/"),
            })
        }
        Some(entry) => entry,
    };
    remove_at(objects, root, names, 0, revision)?;
    Ok(Some(removed))
}

/// Removes a key known to exist below `dir`.
fn remove_at(
    objects: &Objects,
    dir: &mut Link,
    names: &[&str],
    at: usize,
    revision: u64,
) -> Result<()> {
    let name = names[at];
    if at + 1 == names.len() {
        if !remove_in_place(dir, name) {
            *dir = update(objects, dir, name, &mut |_| Ok(None))?;
        }
        return Ok(());
    }
    if let Some(existing) = entry_in_place(dir, name) {
        let EntryValue::Dir { root, count } = &mut existing.value else {
            unreachable!("remove_path checked that the key exists");
        };
        remove_at(objects, root, names, at + 1, revision)?;
        *count = dir_count(objects, root)?;
        existing.revision = revision;
        if *count > 0 {
            return Ok(());
        }
        // The directory is now empty: remove its entry below.
    }
    *dir = update(objects, dir, name, &mut |existing| {
        let Some(Entry {
            value: EntryValue::Dir { root, .. },
            ..
        }) = existing
        else {
            unreachable!("remove_path checked that the key exists");
        };
        let mut child = root.clone();
        if dir_count(objects, &child)? > 0 {
            remove_at(objects, &mut child, names, at + 1, revision)?;
        }
        let count = dir_count(objects, &child)?;
        // A directory left empty disappears with its last entry.
        Ok((count > 0).then(|| Entry {
            name: Name::new(name),
            revision,
            value: EntryValue::Dir { root: child, count },
        }))
    })?;
    Ok(())
}

// ---------------------------------------------------------------- flush

/// Writes every unwritten node reachable from `link` into `batch` (children
/// before parents) and returns the root hash. Whenever the batch holds
/// [`PackBatch::PART_BYTES`], it is appended to the pack as a part; the
/// caller appends the rest, and then the commit record naming the root.
///
/// A node hashed by an earlier flush whose batch never reached the pack (the
/// append failed on a full disk) is written again: a node counts as written
/// only when the pack holds it. Each part is appended whole or not at all,
/// and a part holds no parent of a node in a later one, so a parent in the
/// pack implies its children are.
pub fn flush(objects: &Objects, link: &Link, batch: &mut PackBatch) -> Result<Hash> {
    match link {
        Link::Stored(hash) => Ok(*hash),
        Link::Loaded(cell) => {
            if let Some(hash) = cell.hash() {
                if hash == empty_dir_hash() || objects.pack.contains(&hash) {
                    return Ok(hash);
                }
            }
            let mut failed = None;
            // After a failed part the parent is never written: any hash will
            // do for the children left.
            let bytes = encode_node(&cell.node, &mut |child| {
                if failed.is_some() {
                    return Hash::of(b"");
                }
                flush(objects, child, batch).unwrap_or_else(|error| {
                    failed = Some(error);
                    Hash::of(b"")
                })
            });
            if let Some(error) = failed {
                return Err(error);
            }
            let hash = Hash::of(&bytes);
            if !objects.pack.reuse(&hash, BlobKind::Node) {
                batch.add_blob(hash, &bytes);
                if batch.bytes() >= PackBatch::PART_BYTES {
                    objects.pack.write_part(batch)?;
                }
            }
            cell.set_hash(hash);
            objects.nodes.insert(hash, detached(cell, hash));
            Ok(hash)
        }
    }
}

/// The cell the node cache keeps for a flushed `cell`: the same node with
/// its children by hash. A cached node must not hold loaded children: the
/// cache weighs only the node itself, and a loaded child would keep alive
/// every node under it long after the tree replaced them (a node's memory
/// grew with every write). Leaves without sub-directories are shared as is.
fn detached(cell: &Arc<NodeCell>, hash: Hash) -> Arc<NodeCell> {
    let by_hash = |link: &Link| {
        Link::Stored(
            link.known_hash()
                .expect("a node's children are flushed before it"),
        )
    };
    let node = match &cell.node {
        Node::Branch(branch) => Node::Branch(Branch {
            level: branch.level,
            children: branch
                .children
                .iter()
                .map(|child| Child {
                    last: child.last.clone(),
                    count: child.count,
                    link: by_hash(&child.link),
                })
                .collect(),
        }),
        Node::Leaf(leaf) if leaf.entries.iter().any(holds_a_loaded_dir) => Node::Leaf(Leaf {
            entries: leaf
                .entries
                .iter()
                .map(|entry| match &entry.value {
                    EntryValue::Dir { root, count } => Entry {
                        name: entry.name.clone(),
                        revision: entry.revision,
                        value: EntryValue::Dir {
                            root: by_hash(root),
                            count: *count,
                        },
                    },
                    _ => entry.clone(),
                })
                .collect(),
        }),
        Node::Leaf(_) => return cell.clone(),
    };
    Arc::new(NodeCell::stored(node, hash))
}

fn holds_a_loaded_dir(entry: &Entry) -> bool {
    matches!(
        &entry.value,
        EntryValue::Dir {
            root: Link::Loaded(_),
            ..
        }
    )
}

/// The hash of the empty directory.
pub fn empty_dir_hash() -> Hash {
    static EMPTY: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    *EMPTY.get_or_init(|| {
        let node = Node::Leaf(Leaf {
            entries: Vec::new(),
        });
        Hash::of(&encode_node(&node, &mut |_| {
            unreachable!("empty leaf has no links")
        }))
    })
}

// ---------------------------------------------------------------- reachability

/// What a mark still has to visit.
enum Visit {
    /// A node in memory (a tree being written, or cached).
    Loaded(Arc<NodeCell>),
    /// A stored blob.
    Stored(Hash, BlobKind),
}

impl Visit {
    fn of_link(link: &Link) -> Visit {
        match link {
            Link::Loaded(cell) => Visit::Loaded(cell.clone()),
            Link::Stored(hash) => Visit::Stored(*hash, BlobKind::Node),
        }
    }
}

/// Adds to `live` every blob reachable from `root`: directory nodes, chunk
/// lists and chunks. Stops at the first object it cannot read. Chunks are
/// marked without being read, but when `require_present` is set a chunk
/// the pack does not hold is damage.
///
/// A stored node is scanned for its references rather than decoded
/// ([`node_references`]), and never enters the node cache: a mark reads a
/// whole tree once (a collection reads every retained tree), and caching it
/// would push out the nodes that reads and writes use.
pub fn mark(
    objects: &Objects,
    root: &Link,
    live: &mut HashSet<Hash>,
    require_present: bool,
) -> Result<()> {
    mark_visits(objects, vec![Visit::of_link(root)], live, require_present)
}

/// Marks a stored blob of a known kind live, with everything it refers to
/// (a blob a write reused while a collection ran).
pub fn mark_blob(
    objects: &Objects,
    hash: &Hash,
    kind: BlobKind,
    live: &mut HashSet<Hash>,
) -> Result<()> {
    mark_visits(objects, vec![Visit::Stored(*hash, kind)], live, false)
}

fn mark_visits(
    objects: &Objects,
    mut stack: Vec<Visit>,
    live: &mut HashSet<Hash>,
    require_present: bool,
) -> Result<()> {
    while let Some(visit) = stack.pop() {
        let cell = match visit {
            Visit::Loaded(cell) => {
                if cell.hash().is_some_and(|hash| !live.insert(hash)) {
                    continue;
                }
                cell
            }
            Visit::Stored(hash, kind) => {
                if live.contains(&hash) {
                    continue;
                }
                match kind {
                    BlobKind::Data => {
                        if require_present && !objects.pack.contains(&hash) {
                            return Err(StoreError::MissingBlob { hash });
                        }
                        live.insert(hash);
                        continue;
                    }
                    BlobKind::ChunkList => {
                        live.insert(hash);
                        let list = objects.chunk_list(&hash)?;
                        let kind = if list.level > 0 {
                            BlobKind::ChunkList
                        } else {
                            BlobKind::Data
                        };
                        stack.extend(list.entries.iter().map(|(h, _)| Visit::Stored(*h, kind)));
                        continue;
                    }
                    // The empty directory is implicit: no blob.
                    BlobKind::Node if hash == empty_dir_hash() => {
                        live.insert(hash);
                        continue;
                    }
                    BlobKind::Node => {
                        live.insert(hash);
                        match objects.nodes.peek(&hash) {
                            Some(cell) => cell,
                            None => {
                                let bytes = objects.pack.get(&hash)?;
                                node_references(&bytes, &mut |h, kind| {
                                    stack.push(Visit::Stored(h, kind))
                                })
                                .map_err(|reason| {
                                    StoreError::Undecodable {
                                        what: "directory node",
                                        hash,
                                        reason,
                                    }
                                })?;
                                continue;
                            }
                        }
                    }
                }
            }
        };
        match &cell.node {
            Node::Branch(branch) => {
                stack.extend(
                    branch
                        .children
                        .iter()
                        .map(|child| Visit::of_link(&child.link)),
                );
            }
            Node::Leaf(leaf) => {
                for entry in &leaf.entries {
                    match &entry.value {
                        EntryValue::Inline(_) => {}
                        EntryValue::Dir { root, .. } => stack.push(Visit::of_link(root)),
                        EntryValue::Blob { hash, .. } => {
                            stack.push(Visit::Stored(*hash, BlobKind::Data))
                        }
                        EntryValue::Chunked { list, .. } => {
                            stack.push(Visit::Stored(*list, BlobKind::ChunkList))
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- values

/// Turns bytes into a value: inline when small, else chunks written to `batch`.
pub fn make_value(objects: &Objects, data: &[u8], batch: &mut PackBatch) -> Result<EntryValue> {
    if data.len() <= INLINE_VALUE_BYTES_MAX {
        return Ok(EntryValue::Inline(Bytes::copy_from_slice(data)));
    }
    let mut chunks = Vec::new();
    for chunk in
        fastcdc::v2020::FastCDC::new(data, CHUNK_BYTES_MIN, CHUNK_BYTES_AVERAGE, CHUNK_BYTES_MAX)
    {
        let bytes = &data[chunk.offset..chunk.offset + chunk.length];
        let hash = Hash::of(bytes);
        if !objects.pack.reuse(&hash, BlobKind::Data) {
            batch.add_blob(hash, bytes);
        }
        chunks.push((hash, chunk.length as u64));
    }
    Ok(finish_chunks(objects, chunks, data.len() as u64, batch))
}

/// Reads a value from a stream in chunks, writing each chunk to the pack as
/// it goes (not yet durable) so memory stays bounded for values of any size.
/// The caller must commit (or pin) the returned value before a collection.
pub fn make_value_from_reader(
    objects: &Objects,
    reader: &mut dyn Read,
    limit: u64,
) -> Result<EntryValue> {
    let mut head = Vec::with_capacity(INLINE_VALUE_BYTES_MAX + 1);
    reader
        .take(INLINE_VALUE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut head)
        .map_err(|e| StoreError::io("read value", "<input>", e))?;
    if head.len() <= INLINE_VALUE_BYTES_MAX {
        return Ok(EntryValue::Inline(Bytes::from(head)));
    }
    let chained = std::io::Cursor::new(head).chain(reader);
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let stream = fastcdc::v2020::StreamCDC::new(
        chained,
        CHUNK_BYTES_MIN,
        CHUNK_BYTES_AVERAGE,
        CHUNK_BYTES_MAX,
    );
    for chunk in stream {
        let chunk = chunk.map_err(|e| {
            StoreError::io(
                "read value",
                "<input>",
                std::io::Error::other(e.to_string()),
            )
        })?;
        size += chunk.length as u64;
        if size > limit {
            return Err(StoreError::TooLarge {
                what: "value",
                size,
                limit,
            });
        }
        let hash = Hash::of(&chunk.data);
        if !objects.pack.reuse(&hash, BlobKind::Data) {
            let mut batch = PackBatch::new();
            batch.add_blob(hash, &chunk.data);
            objects.pack.write(batch, None, false)?;
        }
        chunks.push((hash, chunk.length as u64));
    }
    let mut batch = PackBatch::new();
    let value = finish_chunks(objects, chunks, size, &mut batch);
    objects.pack.write(batch, None, false)?;
    Ok(value)
}

fn finish_chunks(
    objects: &Objects,
    mut entries: Vec<(Hash, u64)>,
    size: u64,
    batch: &mut PackBatch,
) -> EntryValue {
    if entries.len() == 1 {
        return EntryValue::Blob {
            hash: entries[0].0,
            size,
        };
    }
    let mut level = 0u8;
    loop {
        let lists: Vec<(Hash, u64)> = entries
            .chunks(CHUNK_LIST_ENTRIES_MAX)
            .map(|group| {
                let list = ChunkList {
                    level,
                    entries: group.to_vec(),
                };
                let bytes = encode_chunk_list(&list);
                let hash = Hash::of(&bytes);
                if !objects.pack.reuse(&hash, BlobKind::ChunkList) {
                    batch.add_blob(hash, &bytes);
                }
                (hash, group.iter().map(|(_, s)| s).sum())
            })
            .collect();
        if lists.len() == 1 {
            return EntryValue::Chunked {
                list: lists[0].0,
                size,
            };
        }
        entries = lists;
        level += 1;
    }
}

/// The data chunk hashes of a value, in order.
pub fn value_chunks(objects: &Objects, value: &EntryValue) -> Result<Vec<(Hash, u64)>> {
    match value {
        EntryValue::Inline(_) | EntryValue::Dir { .. } => Ok(Vec::new()),
        EntryValue::Blob { hash, size } => Ok(vec![(*hash, *size)]),
        EntryValue::Chunked { list, .. } => {
            let mut out = Vec::new();
            expand_list(objects, list, &mut out)?;
            Ok(out)
        }
    }
}

fn expand_list(objects: &Objects, list: &Hash, out: &mut Vec<(Hash, u64)>) -> Result<()> {
    let decoded = objects.chunk_list(list)?;
    for (hash, size) in decoded.entries {
        if decoded.level == 0 {
            out.push((hash, size));
        } else {
            expand_list(objects, &hash, out)?;
        }
    }
    Ok(())
}

/// Reads a whole value into memory (verifying every chunk).
pub fn read_value(objects: &Objects, value: &EntryValue) -> Result<Bytes> {
    match value {
        EntryValue::Inline(bytes) => Ok(bytes.clone()),
        EntryValue::Dir { .. } => Err(StoreError::IsADirectory {
            path: String::new(),
        }),
        _ => {
            let mut out = Vec::with_capacity(value.size().unwrap_or(0).min(1 << 30) as usize);
            for (hash, _) in value_chunks(objects, value)? {
                out.extend_from_slice(&objects.pack.get(&hash)?);
            }
            Ok(Bytes::from(out))
        }
    }
}

/// Streams a value chunk by chunk to `out` (verifying every chunk).
pub fn write_value_to(
    objects: &Objects,
    value: &EntryValue,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    let write = |out: &mut dyn std::io::Write, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|e| StoreError::io("write value", "<output>", e))
    };
    match value {
        EntryValue::Inline(bytes) => {
            write(out, bytes)?;
            Ok(bytes.len() as u64)
        }
        EntryValue::Dir { .. } => Err(StoreError::IsADirectory {
            path: String::new(),
        }),
        _ => {
            let mut total = 0;
            for (hash, _) in value_chunks(objects, value)? {
                let bytes = objects.pack.get(&hash)?;
                write(out, &bytes)?;
                total += bytes.len() as u64;
            }
            Ok(total)
        }
    }
}

/// A map from hash to anything, hashed cheaply (hashes are already uniform).
pub type ByHash<V> = HashMapByHash<V>;

/// Builds the canonical directory holding `entries`, which must be sorted by
/// name with no name twice (used to rebuild directories during repair and
/// restore). The result is in memory until flushed.
pub fn build_dir(objects: &Objects, entries: Vec<Entry>) -> Result<Link> {
    assert!(
        entries.windows(2).all(|w| w[0].name < w[1].name),
        "build_dir needs entries sorted by name, each name once"
    );
    let mut builder = Builder::default();
    for entry in entries {
        builder.push_entry(entry);
    }
    builder.finish(objects)
}

/// Checks that the directory rooted at `root` is exactly the canonical tree
/// of its entries: every node in bounds, sorted, with correct counts and last
/// names, cut exactly where the rules say. Returns the first violation.
pub fn check_canonical(objects: &Objects, root: &Link) -> Result<std::result::Result<(), String>> {
    let expected = build_dir(objects, dir_entries(objects, root)?)?;
    let expected_hash = hash_detached(&expected);
    let actual_hash = match root.known_hash() {
        Some(hash) => hash,
        None => hash_detached(root),
    };
    if expected_hash == actual_hash {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "directory {actual_hash} is not in canonical form (expected {expected_hash} for the same entries)"
        )))
    }
}

/// Hashes an in-memory tree without touching the pack or the cache.
fn hash_detached(link: &Link) -> Hash {
    match link {
        Link::Stored(hash) => *hash,
        Link::Loaded(cell) => match cell.hash() {
            Some(hash) => hash,
            None => Hash::of(&encode_node(&cell.node, &mut hash_detached)),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::segment::Mode;

    fn objects() -> (tempfile::TempDir, Objects) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        let (pack, _) = Pack::open(
            &dir.path().join("pack"),
            &dir.path().join("staging"),
            Mode::ReadWrite,
            1 << 26,
        )
        .unwrap();
        (dir, Objects::new(pack, 1 << 24))
    }

    fn value() -> EntryValue {
        EntryValue::Inline(Bytes::from_static(b"v"))
    }

    /// Structural invariants of every node, independent of canonical form.
    fn check_structure(objects: &Objects, link: &Link, level: u8) -> (u64, Option<String>) {
        let cell = objects.resolve(link).unwrap();
        assert_eq!(cell.node.level(), level, "node at the wrong level");
        assert!(cell.node.items() <= ITEMS_MAX, "node over the item limit");
        match &cell.node {
            Node::Leaf(leaf) => {
                assert!(
                    leaf.entries.windows(2).all(|w| w[0].name < w[1].name),
                    "leaf out of order"
                );
                (
                    leaf.entries.len() as u64,
                    leaf.entries.last().map(|e| e.name.to_string()),
                )
            }
            Node::Branch(branch) => {
                let mut total = 0;
                for child in &branch.children {
                    let (count, last) = check_structure(objects, &child.link, level - 1);
                    assert_eq!(count, child.count, "child count");
                    assert_eq!(
                        last.as_deref(),
                        Some(child.last.as_str()),
                        "child last name"
                    );
                    total += count;
                }
                (total, branch.children.last().map(|c| c.last.to_string()))
            }
        }
    }

    fn run(names: &[String], ops: &[(bool, usize)]) {
        let (_dir, objects) = objects();
        let mut root = Link::empty_dir();
        let mut model = BTreeSet::new();
        for (step, (insert, index)) in ops.iter().enumerate() {
            if step % 97 == 0 || index % 5 == 0 {
                // Hash everything now and then: later edits start from shared nodes.
                let mut batch = PackBatch::new();
                flush(&objects, &root, &mut batch).unwrap();
                objects.pack.write(batch, None, false).unwrap();
            }
            let name = &names[index % names.len()];
            if *insert {
                put_path(&objects, &mut root, &[name.as_str()], value(), 1).unwrap();
                model.insert(name.clone());
            } else {
                remove_path(&objects, &mut root, &[name.as_str()], false, 1).unwrap();
                model.remove(name);
            }
        }
        let listed: Vec<String> = dir_entries(&objects, &root)
            .unwrap()
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(listed, model.iter().cloned().collect::<Vec<_>>());
        let level = objects.resolve(&root).unwrap().node.level();
        check_structure(&objects, &root, level);
        check_canonical(&objects, &root).unwrap().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_edits_leave_the_canonical_tree(ops in prop::collection::vec((prop::bool::weighted(0.7), 0usize..5000), 1..3000)) {
            let names: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
            run(&names, &ops);
        }

        #[test]
        fn small_directories_shrink_and_grow_canonically(ops in prop::collection::vec((prop::bool::weighted(0.5), 0usize..40), 1..400)) {
            let names: Vec<String> = (0..40).map(|i| format!("x{i}")).collect();
            run(&names, &ops);
        }

        #[test]
        fn forced_cuts_stay_canonical(ops in prop::collection::vec((prop::bool::weighted(0.7), 0usize..1200), 1..2500)) {
            // Names that never end a leaf naturally: every leaf is cut by the item limit.
            let names: Vec<String> = (0..)
                .map(|i| format!("n{i}"))
                .filter(|n| !Name::new(n).is_boundary(0))
                .take(1200)
                .collect();
            run(&names, &ops);
        }
    }

    #[test]
    fn an_overwrite_copies_shared_nodes_and_leaves_older_roots_alone() {
        let (_dir, objects) = objects();
        let mut root = Link::empty_dir();
        for i in 0..3000 {
            let name = format!("k{i:05}");
            put_path(&objects, &mut root, &["dir", &name], value(), 1).unwrap();
        }
        // Half the nodes hashed (shared with the pack's view), and a reader
        // holding the in-memory root: nothing on the path is private.
        let mut batch = PackBatch::new();
        flush(&objects, &root, &mut batch).unwrap();
        objects.pack.write(batch, None, false).unwrap();
        put_path(&objects, &mut root, &["dir", "k00007"], value(), 2).unwrap();
        let reader = root.clone();
        let new = EntryValue::Inline(Bytes::from_static(b"new"));
        for name in ["k00042", "k02999", "k00042"] {
            let replaced = put_path(&objects, &mut root, &["dir", name], new.clone(), 3).unwrap();
            assert!(replaced.is_some(), "{name} existed");
        }
        let at =
            |root: &Link, name: &str| get_path(&objects, root, &["dir", name]).unwrap().unwrap();
        let bytes_of = |entry: Entry| match entry.value {
            EntryValue::Inline(bytes) => bytes,
            _ => panic!("{} is not inline", entry.name),
        };
        assert_eq!(bytes_of(at(&reader, "k00042")), "v");
        assert_eq!(at(&reader, "k00042").revision, 1);
        assert_eq!(bytes_of(at(&root, "k00042")), "new");
        assert_eq!(at(&root, "k00042").revision, 3);
        assert_eq!(bytes_of(at(&root, "k02999")), "new");
        assert_eq!(at(&root, "k00007").revision, 2);
        let entry = get_path(&objects, &root, &["dir"]).unwrap().unwrap();
        let EntryValue::Dir { root: dir, count } = entry.value else {
            panic!("dir is a directory")
        };
        assert_eq!(count, 3000);
        check_canonical(&objects, &dir).unwrap().unwrap();
    }

    /// A weak reference to every in-memory node under `link`.
    fn loaded_cells(link: &Link, out: &mut Vec<std::sync::Weak<NodeCell>>) {
        let Link::Loaded(cell) = link else { return };
        out.push(Arc::downgrade(cell));
        match &cell.node {
            Node::Branch(branch) => {
                for child in &branch.children {
                    loaded_cells(&child.link, out);
                }
            }
            Node::Leaf(leaf) => {
                for entry in &leaf.entries {
                    if let EntryValue::Dir { root, .. } = &entry.value {
                        loaded_cells(root, out);
                    }
                }
            }
        }
    }

    #[test]
    fn the_node_cache_keeps_no_node_the_tree_replaced_alive() {
        let (_dir, objects) = objects();
        let mut root = Link::empty_dir();
        let names: Vec<String> = (0..3000).map(|i| format!("k{i:05}")).collect();
        let flush_all = |root: &Link| {
            let mut batch = PackBatch::new();
            flush(&objects, root, &mut batch).unwrap();
            objects.pack.write(batch, None, false).unwrap();
        };
        for name in &names {
            put_path(&objects, &mut root, &["dir", name], value(), 1).unwrap();
        }
        flush_all(&root);
        let mut old = Vec::new();
        loaded_cells(&root, &mut old);
        assert!(old.len() > 300, "{} nodes", old.len());
        // The cache holds what the flush wrote, each node by itself.
        for cell in old.iter().filter_map(std::sync::Weak::upgrade) {
            let cached = objects.nodes.get(&cell.hash().unwrap()).unwrap();
            let mut under = Vec::new();
            loaded_cells(&Link::Loaded(cached), &mut under);
            assert_eq!(under.len(), 1, "a cached node holds loaded children");
        }
        let old_hashes: Vec<Hash> = old
            .iter()
            .filter_map(|cell| cell.upgrade()?.hash())
            .collect();
        // Every leaf and branch changes, so the flushed ones are copied, and
        // the versions the tree left behind leave the cache.
        for name in &names {
            put_path(&objects, &mut root, &["dir", name], value(), 2).unwrap();
        }
        let still_cached = old_hashes
            .iter()
            .filter(|hash| objects.nodes.get(*hash).is_some())
            .count();
        assert_eq!(still_cached, 0, "replaced nodes still in the cache");
        flush_all(&root);
        // What outlives the tree is only what the cache holds and weighs:
        // its own entries, none of them holding a node by pointer.
        let mut alive = 0;
        for cell in old.iter().filter_map(std::sync::Weak::upgrade) {
            alive += 1;
            let cached = objects.nodes.get(&cell.hash().unwrap());
            assert!(
                cached.is_some_and(|cached| Arc::ptr_eq(&cached, &cell)),
                "a replaced node outside the cache is still in memory: {:?}",
                cell.node
            );
            let mut under = Vec::new();
            loaded_cells(&Link::Loaded(cell), &mut under);
            assert_eq!(under.len(), 1, "a cached node holds loaded children");
        }
        assert!(alive < old.len(), "no replaced node was freed");
        assert_eq!(
            get_path(&objects, &root, &["dir", "k02999"])
                .unwrap()
                .unwrap()
                .revision,
            2
        );
        // And reading through the cache from the root's hash finds the same.
        let stored = Link::Stored(root.known_hash().unwrap());
        assert_eq!(
            get_path(&objects, &stored, &["dir", "k00000"])
                .unwrap()
                .unwrap()
                .revision,
            2
        );
    }

    #[test]
    fn a_large_directory_has_several_levels_and_shrinks_back() {
        let (_dir, objects) = objects();
        let mut root = Link::empty_dir();
        for i in 0..20_000 {
            put_path(&objects, &mut root, &[&format!("k{i:06}")], value(), 1).unwrap();
        }
        assert!(objects.resolve(&root).unwrap().node.level() >= 2);
        check_canonical(&objects, &root).unwrap().unwrap();
        for i in 0..20_000 {
            remove_path(&objects, &mut root, &[&format!("k{i:06}")], false, 1).unwrap();
        }
        let mut batch = PackBatch::new();
        assert_eq!(
            flush(&objects, &root, &mut batch).unwrap(),
            empty_dir_hash()
        );
    }
}
