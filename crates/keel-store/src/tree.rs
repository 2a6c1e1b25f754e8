//! Operations on the Merkle tree: HAMT directories, paths, values, flushing.
//!
//! Trees are persistent: a change copies the nodes on its path (only those
//! not already private to the writer) and leaves every other node shared, so
//! a reader holding an older root keeps a consistent view for free. New
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
    decode_chunk_list, decode_node, encode_chunk_list, encode_node, name_hash, slot, Branch,
    ChunkList, Entry, EntryValue, Leaf, Link, Name, Node, NodeCell, CHUNK_BYTES_AVERAGE,
    CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, CHUNK_LIST_ENTRIES_MAX, DEPTH_MAX, INLINE_VALUE_BYTES_MAX,
    LEAF_ENTRIES_MAX,
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
            Node::Branch(branch) => (96 + branch.children.len() * 48) as u64,
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

    /// Loads a directory node, verifying its hash and decoding it. The empty
    /// directory is implicit: it needs no blob and so can never be missing.
    pub fn node(&self, hash: &Hash) -> Result<Arc<NodeCell>> {
        if let Some(cell) = self.nodes.get(hash) {
            return Ok(cell);
        }
        if *hash == empty_dir_hash() {
            let empty = Node::Leaf(Leaf {
                depth: 0,
                entries: Vec::new(),
            });
            return Ok(Arc::new(NodeCell::stored(empty, *hash)));
        }
        let bytes = self.pack.get(hash)?;
        let node = decode_node(&bytes).map_err(|reason| StoreError::Undecodable {
            what: "directory node",
            hash: *hash,
            reason,
        })?;
        let cell = Arc::new(NodeCell::stored(node, *hash));
        self.nodes.insert(*hash, cell.clone());
        Ok(cell)
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

// ---------------------------------------------------------------- HAMT

/// Number of direct entries of the directory rooted at `root`.
pub fn dir_count(objects: &Objects, root: &Link) -> Result<u64> {
    Ok(objects.resolve(root)?.node.count())
}

/// The entry `name` of the directory rooted at `root`.
pub fn dir_get(objects: &Objects, root: &Link, name: &str) -> Result<Option<Entry>> {
    let hash = name_hash(name);
    let mut cell = objects.resolve(root)?;
    loop {
        let next = match &cell.node {
            Node::Leaf(leaf) => {
                return Ok(leaf
                    .entries
                    .binary_search_by(|e| (*e.name).cmp(name))
                    .ok()
                    .map(|i| leaf.entries[i].clone()))
            }
            Node::Branch(branch) => match child_index(branch, slot(&hash, branch.depth)) {
                Ok(i) => objects.resolve(&branch.children[i].1)?,
                Err(_) => return Ok(None),
            },
        };
        cell = next;
    }
}

/// Every entry of the directory rooted at `root`, sorted by name.
pub fn dir_entries(objects: &Objects, root: &Link) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    collect_entries(objects, root, &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn collect_entries(objects: &Objects, link: &Link, out: &mut Vec<Entry>) -> Result<()> {
    let cell = objects.resolve(link)?;
    match &cell.node {
        Node::Leaf(leaf) => out.extend(leaf.entries.iter().cloned()),
        Node::Branch(branch) => {
            for (_, child) in &branch.children {
                collect_entries(objects, child, out)?;
            }
        }
    }
    Ok(())
}

fn child_index(branch: &Branch, slot: u8) -> std::result::Result<usize, usize> {
    branch.children.binary_search_by_key(&slot, |(s, _)| *s)
}

/// Gives mutable access to the node behind `link`, copying it first unless
/// it is already private to the caller and not yet written.
fn make_mut<'a>(objects: &Objects, link: &'a mut Link) -> Result<&'a mut Node> {
    let private = match link {
        Link::Loaded(cell) => cell.hash().is_none() && Arc::get_mut(cell).is_some(),
        Link::Stored(_) => false,
    };
    if !private {
        let copy = NodeCell::clone(&*objects.resolve(link)?);
        *link = Link::Loaded(Arc::new(copy));
    }
    match link {
        Link::Loaded(cell) => Ok(&mut Arc::get_mut(cell).expect("node was just made private").node),
        Link::Stored(_) => unreachable!("link was just replaced by a loaded node"),
    }
}

/// Builds the canonical node for `entries` (sorted by name) at `depth`.
fn build_node(entries: Vec<Entry>, depth: u8) -> Node {
    if entries.len() <= LEAF_ENTRIES_MAX || depth == DEPTH_MAX {
        return Node::Leaf(Leaf { depth, entries });
    }
    let count = entries.len() as u64;
    let mut groups: Vec<(u8, Vec<Entry>)> = Vec::new();
    let mut keyed: Vec<(u8, Entry)> = entries
        .into_iter()
        .map(|e| (slot(&name_hash(&e.name), depth), e))
        .collect();
    // Stable sort keeps each group's entries in name order.
    keyed.sort_by_key(|(s, _)| *s);
    for (s, entry) in keyed {
        match groups.last_mut() {
            Some((last, group)) if *last == s => group.push(entry),
            _ => groups.push((s, vec![entry])),
        }
    }
    let children = groups
        .into_iter()
        .map(|(s, group)| {
            (
                s,
                Link::Loaded(Arc::new(NodeCell::new(build_node(group, depth + 1)))),
            )
        })
        .collect();
    Node::Branch(Branch {
        depth,
        count,
        children,
    })
}

/// Inserts or replaces an entry; returns the entry it replaced.
pub fn dir_insert(objects: &Objects, root: &mut Link, entry: Entry) -> Result<Option<Entry>> {
    let hash = name_hash(&entry.name);
    node_insert(objects, root, entry, &hash)
}

fn node_insert(
    objects: &Objects,
    link: &mut Link,
    entry: Entry,
    hash: &[u8; 32],
) -> Result<Option<Entry>> {
    let node = make_mut(objects, link)?;
    match node {
        Node::Leaf(leaf) => match leaf.entries.binary_search_by(|e| e.name.cmp(&entry.name)) {
            Ok(i) => Ok(Some(std::mem::replace(&mut leaf.entries[i], entry))),
            Err(i) => {
                leaf.entries.insert(i, entry);
                if leaf.entries.len() > LEAF_ENTRIES_MAX && leaf.depth < DEPTH_MAX {
                    let depth = leaf.depth;
                    let entries = std::mem::take(&mut leaf.entries);
                    *node = build_node(entries, depth);
                }
                Ok(None)
            }
        },
        Node::Branch(branch) => {
            let s = slot(hash, branch.depth);
            let replaced = match child_index(branch, s) {
                Ok(i) => node_insert(objects, &mut branch.children[i].1, entry, hash)?,
                Err(i) => {
                    let leaf = Node::Leaf(Leaf {
                        depth: branch.depth + 1,
                        entries: vec![entry],
                    });
                    branch
                        .children
                        .insert(i, (s, Link::Loaded(Arc::new(NodeCell::new(leaf)))));
                    None
                }
            };
            if replaced.is_none() {
                branch.count += 1;
            }
            Ok(replaced)
        }
    }
}

/// Removes an entry; returns it. Call only for names known to exist (a miss
/// still copies the path, which is harmless but wasteful).
pub fn dir_remove(objects: &Objects, root: &mut Link, name: &str) -> Result<Option<Entry>> {
    let hash = name_hash(name);
    node_remove(objects, root, name, &hash)
}

fn node_remove(
    objects: &Objects,
    link: &mut Link,
    name: &str,
    hash: &[u8; 32],
) -> Result<Option<Entry>> {
    let node = make_mut(objects, link)?;
    let Node::Branch(branch) = node else {
        let Node::Leaf(leaf) = node else {
            unreachable!()
        };
        return Ok(
            match leaf.entries.binary_search_by(|e| (*e.name).cmp(name)) {
                Ok(i) => Some(leaf.entries.remove(i)),
                Err(_) => None,
            },
        );
    };
    let Ok(i) = child_index(branch, slot(hash, branch.depth)) else {
        return Ok(None);
    };
    let removed = node_remove(objects, &mut branch.children[i].1, name, hash)?;
    if removed.is_none() {
        return Ok(None);
    }
    branch.count -= 1;
    if objects.resolve(&branch.children[i].1)?.node.count() == 0 {
        branch.children.remove(i);
    }
    if branch.count as usize <= LEAF_ENTRIES_MAX {
        let depth = branch.depth;
        let mut entries = Vec::with_capacity(branch.count as usize);
        for (_, child) in &branch.children {
            collect_entries(objects, child, &mut entries)?;
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        *node = Node::Leaf(Leaf { depth, entries });
    }
    Ok(removed)
}

/// Mutable access to entry `name`, copying the nodes on its path as needed.
fn dir_entry_mut<'a>(
    objects: &Objects,
    root: &'a mut Link,
    name: &str,
) -> Result<Option<&'a mut Entry>> {
    let hash = name_hash(name);
    let mut link = root;
    loop {
        let node = make_mut(objects, link)?;
        match node {
            Node::Leaf(leaf) => {
                return Ok(
                    match leaf.entries.binary_search_by(|e| (*e.name).cmp(name)) {
                        Ok(i) => Some(&mut leaf.entries[i]),
                        Err(_) => None,
                    },
                )
            }
            Node::Branch(branch) => match child_index(branch, slot(&hash, branch.depth)) {
                Ok(i) => link = &mut branch.children[i].1,
                Err(_) => return Ok(None),
            },
        }
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

/// Sets the value at a key, creating parent directories. Returns the entry
/// it replaced. Errors (before any change) if a parent is a value or the key
/// is a directory.
pub fn put_path(
    objects: &Objects,
    root: &mut Link,
    names: &[&str],
    value: EntryValue,
    revision: u64,
) -> Result<Option<Entry>> {
    put_at(objects, root, names, 0, value, revision)
}

fn put_at(
    objects: &Objects,
    dir: &mut Link,
    names: &[&str],
    at: usize,
    value: EntryValue,
    revision: u64,
) -> Result<Option<Entry>> {
    let name = names[at];
    if at + 1 == names.len() {
        if let Some(existing) = dir_get(objects, dir, name)? {
            if existing.value.is_dir() && !value.is_dir() {
                return Err(StoreError::IsADirectory {
                    path: names.join("/"),
                });
            }
        }
        let entry = Entry {
            name: Name::from(name),
            revision,
            value,
        };
        return dir_insert(objects, dir, entry);
    }
    match dir_entry_mut(objects, dir, name)? {
        Some(entry) => {
            let EntryValue::Dir { root, count } = &mut entry.value else {
                return Err(StoreError::NotADirectory {
                    path: names[..=at].join("/"),
                });
            };
            let replaced = put_at(objects, root, names, at + 1, value, revision)?;
            *count = dir_count(objects, root)?;
            entry.revision = revision;
            Ok(replaced)
        }
        None => {
            let mut child = Link::empty_dir();
            put_at(objects, &mut child, names, at + 1, value, revision)?;
            let entry = Entry {
                name: Name::from(name),
                revision,
                value: EntryValue::Dir {
                    root: child,
                    count: 1,
                },
            };
            dir_insert(objects, dir, entry)?;
            Ok(None)
        }
    }
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
    match get_path(objects, root, names)? {
        None => return Ok(None),
        Some(entry) if entry.value.is_dir() && !allow_dir => {
            return Err(StoreError::IsADirectory {
                path: names.join("/"),
            })
        }
        Some(_) => {}
    }
    remove_at(objects, root, names, 0, revision)
}

fn remove_at(
    objects: &Objects,
    dir: &mut Link,
    names: &[&str],
    at: usize,
    revision: u64,
) -> Result<Option<Entry>> {
    let name = names[at];
    if at + 1 == names.len() {
        return dir_remove(objects, dir, name);
    }
    let (removed, now_empty) = {
        let Some(entry) = dir_entry_mut(objects, dir, name)? else {
            return Ok(None);
        };
        let EntryValue::Dir { root, count } = &mut entry.value else {
            return Ok(None);
        };
        let removed = remove_at(objects, root, names, at + 1, revision)?;
        *count = dir_count(objects, root)?;
        entry.revision = revision;
        (removed, *count == 0)
    };
    if now_empty {
        dir_remove(objects, dir, name)?;
    }
    Ok(removed)
}

// ---------------------------------------------------------------- flush

/// Writes every unwritten node reachable from `link` into `batch` (children
/// before parents) and returns the root hash.
pub fn flush(objects: &Objects, link: &Link, batch: &mut PackBatch) -> Hash {
    match link {
        Link::Stored(hash) => *hash,
        Link::Loaded(cell) => {
            if let Some(hash) = cell.hash() {
                return hash;
            }
            let bytes = encode_node(&cell.node, &mut |child| flush(objects, child, batch));
            let hash = Hash::of(&bytes);
            if !objects.pack.contains(&hash) {
                batch.add_blob(hash, &bytes);
            }
            cell.set_hash(hash);
            objects.nodes.insert(hash, cell.clone());
            hash
        }
    }
}

/// The hash of the empty directory.
pub fn empty_dir_hash() -> Hash {
    static EMPTY: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    *EMPTY.get_or_init(|| {
        let node = Node::Leaf(Leaf {
            depth: 0,
            entries: Vec::new(),
        });
        Hash::of(&encode_node(&node, &mut |_| {
            unreachable!("empty leaf has no links")
        }))
    })
}

// ---------------------------------------------------------------- reachability

/// How [`mark`] treats objects it cannot read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDamage {
    /// Stop with the error (garbage collection must know the whole live set).
    Fail,
    /// Skip what cannot be read (a partly fetched snapshot).
    Skip,
}

/// Adds to `live` every blob reachable from `root`: directory nodes, chunk
/// lists and chunks. Chunks are marked without being read, but when
/// `require_present` is set a chunk the pack does not hold is damage.
pub fn mark(
    objects: &Objects,
    root: &Link,
    live: &mut HashSet<Hash>,
    on_damage: OnDamage,
    require_present: bool,
) -> Result<()> {
    let mut stack = vec![root.clone()];
    while let Some(link) = stack.pop() {
        if let Some(hash) = link.known_hash() {
            if !live.insert(hash) {
                continue;
            }
        }
        let cell = match objects.resolve(&link) {
            Ok(cell) => cell,
            Err(error) if on_damage == OnDamage::Skip && error.is_damage() => continue,
            Err(error) => return Err(error),
        };
        let entries = match &cell.node {
            Node::Branch(branch) => {
                stack.extend(branch.children.iter().map(|(_, child)| child.clone()));
                continue;
            }
            Node::Leaf(leaf) => &leaf.entries,
        };
        for entry in entries {
            match &entry.value {
                EntryValue::Inline(_) => {}
                EntryValue::Dir { root, .. } => stack.push(root.clone()),
                EntryValue::Blob { hash, .. } => {
                    if require_present && !objects.pack.contains(hash) {
                        if on_damage == OnDamage::Fail {
                            return Err(StoreError::MissingBlob { hash: *hash });
                        }
                        continue;
                    }
                    live.insert(*hash);
                }
                EntryValue::Chunked { list, .. } => {
                    match mark_chunk_list(objects, list, live, require_present) {
                        Ok(()) => {}
                        Err(error) if on_damage == OnDamage::Skip && error.is_damage() => {}
                        Err(error) => return Err(error),
                    }
                }
            }
        }
    }
    Ok(())
}

fn mark_chunk_list(
    objects: &Objects,
    list: &Hash,
    live: &mut HashSet<Hash>,
    require_present: bool,
) -> Result<()> {
    if !live.insert(*list) {
        return Ok(());
    }
    let decoded = objects.chunk_list(list)?;
    for (hash, _) in &decoded.entries {
        if decoded.level > 0 {
            mark_chunk_list(objects, hash, live, require_present)?;
        } else {
            if require_present && !objects.pack.contains(hash) {
                return Err(StoreError::MissingBlob { hash: *hash });
            }
            live.insert(*hash);
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
        if !objects.pack.contains(&hash) {
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
        if !objects.pack.contains(&hash) {
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
                if !objects.pack.contains(&hash) {
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
