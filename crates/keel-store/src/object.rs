//! The objects of the Merkle tree and their byte encoding.
//!
//! Every object is one blob, named by the BLAKE3 hash of its encoding.
//!
//! **Directories** are prolly trees: B-trees whose node boundaries are chosen
//! by the content, not by history. Entries are sorted by name; at level 0 a
//! node ends after an entry whose name hash marks a boundary (about one name
//! in [`ITEMS_TARGET`]), or after [`ITEMS_MAX`] entries. Each level above
//! holds one child per node of the level below (with the child's last name
//! and entry count) and is cut the same way with independent hash bits,
//! until a level has a single node: the root. So:
//!
//! - the shape depends only on the set of entries, never on the order they
//!   were written in: equal directories have equal hashes on every replica;
//! - a change rewrites O(log n) nodes, and changes to nearby names (a batch
//!   of sequential keys) share the same few nodes;
//! - listings come out sorted, with no sorting step.
//!
//! **Values** up to [`INLINE_VALUE_BYTES_MAX`] live inside the directory entry.
//! Larger values are cut into content-defined chunks (so equal data dedups):
//! a one-chunk value points at its chunk; a longer one at a chunk list, a
//! small tree of chunk hashes with sizes.
//!
//! ```text
//! leaf:       0x01 version count:u32 entry*
//! branch:     0x02 version level:u8 count:u32 (name_len:u16 last_name entries:u64 hash*32)*
//! chunk list: 0x03 version level:u8 count:u32 (hash*32 size:u64)*
//! entry:      name_len:u16 name revision:u64 kind:u8 payload
//!   kind 1 inline   len:u32 bytes
//!   kind 2 blob     hash*32 size:u64      (one chunk)
//!   kind 3 chunked  hash*32 size:u64      (chunk list)
//!   kind 4 dir      hash*32 count:u64     (root node, direct entries)
//! ```
//! Integers are little-endian. Chunks themselves are raw bytes.

use std::cmp::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::hash::{Hash, HASH_BYTES};
use crate::key::validate_name;

/// Version byte written after each object tag.
pub const OBJECT_VERSION: u8 = 1;
pub const TAG_LEAF: u8 = 0x01;
pub const TAG_BRANCH: u8 = 0x02;
pub const TAG_CHUNK_LIST: u8 = 0x03;

/// Average items per directory node (a boundary is one name hash in this many).
pub const ITEMS_TARGET: usize = 8;
/// Hash bits that decide a boundary at one level: log2(ITEMS_TARGET).
pub const BOUNDARY_BITS: u32 = 3;
/// Most items a directory node holds; a longer run is cut here.
pub const ITEMS_MAX: usize = 256;
/// Levels with their own boundary bits; higher levels cut after every item.
pub const LEVELS_WITH_BITS: u8 = 21;
/// Largest value stored inline in its directory entry.
pub const INLINE_VALUE_BYTES_MAX: usize = 1024;
/// Chunk list entries per chunk-list object.
pub const CHUNK_LIST_ENTRIES_MAX: usize = 4096;
/// Content-defined chunking bounds.
pub const CHUNK_BYTES_MIN: usize = 16 * 1024;
pub const CHUNK_BYTES_AVERAGE: usize = 64 * 1024;
pub const CHUNK_BYTES_MAX: usize = 256 * 1024;
/// Largest blob the store writes or accepts.
pub const BLOB_BYTES_MAX: usize = 1024 * 1024;

const _: () = assert!(1 << BOUNDARY_BITS == ITEMS_TARGET);
const _: () = assert!(
    LEVELS_WITH_BITS as u32 * BOUNDARY_BITS <= 64,
    "boundary bits come from one u64"
);
const _: () = assert!(ITEMS_MAX > 4 * ITEMS_TARGET);
const _: () = assert!(CHUNK_BYTES_MAX <= BLOB_BYTES_MAX);
const _: () = assert!(INLINE_VALUE_BYTES_MAX < CHUNK_BYTES_MIN);
// Largest leaf: every entry at the name and inline limits, plus headers.
const _: () =
    assert!(ITEMS_MAX * (2 + 255 + 8 + 1 + 4 + INLINE_VALUE_BYTES_MAX) + 16 <= BLOB_BYTES_MAX);
const _: () = assert!(ITEMS_MAX * (2 + 255 + 8 + HASH_BYTES) + 16 <= BLOB_BYTES_MAX);
const _: () = assert!(CHUNK_LIST_ENTRIES_MAX * (HASH_BYTES + 8) + 16 <= BLOB_BYTES_MAX);

/// A directory entry name (one path segment), with its boundary hash bits
/// computed once and its first bytes kept inline, so that most comparisons
/// in a lookup touch no other memory.
#[derive(Clone)]
pub struct Name {
    /// The first 16 bytes, zero-padded, big-endian: ordered like the text
    /// because names never contain NUL.
    prefix: u128,
    bits: u64,
    text: Arc<str>,
}

const PREFIX_BYTES: usize = 16;

fn prefix_of(text: &str) -> u128 {
    let mut raw = [0u8; PREFIX_BYTES];
    let n = text.len().min(PREFIX_BYTES);
    raw[..n].copy_from_slice(&text.as_bytes()[..n]);
    u128::from_be_bytes(raw)
}

/// A name being looked up, prepared once for many comparisons.
pub struct NameKey<'a> {
    prefix: u128,
    text: &'a str,
}

impl<'a> NameKey<'a> {
    pub fn new(text: &'a str) -> NameKey<'a> {
        NameKey {
            prefix: prefix_of(text),
            text,
        }
    }
}

impl Name {
    pub fn new(text: &str) -> Name {
        let hash = blake3::hash(text.as_bytes());
        Name {
            prefix: prefix_of(text),
            bits: u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes")),
            text: Arc::from(text),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Orders this name against a prepared key.
    pub fn cmp_key(&self, key: &NameKey<'_>) -> Ordering {
        match self.prefix.cmp(&key.prefix) {
            // Equal prefixes decide it when either name fits in the prefix:
            // without NUL bytes, the shorter one would show a zero there.
            Ordering::Equal if self.text.len() > PREFIX_BYTES && key.text.len() > PREFIX_BYTES => {
                self.text[PREFIX_BYTES..].cmp(&key.text[PREFIX_BYTES..])
            }
            Ordering::Equal => self.text.len().cmp(&key.text.len()),
            other => other,
        }
    }

    /// Whether a node at `level` naturally ends after the item named `self`.
    pub fn is_boundary(&self, level: u8) -> bool {
        if level >= LEVELS_WITH_BITS {
            return true;
        }
        let window = self.bits >> (u32::from(level) * BOUNDARY_BITS);
        window & (ITEMS_TARGET as u64 - 1) == 0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::new(text)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.prefix == other.prefix && self.text == other.text
    }
}
impl Eq for Name {}
impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.cmp_key(&NameKey {
            prefix: other.prefix,
            text: &other.text,
        })
    }
}
impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}
impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to a directory node: by hash (stored, loaded on demand) or to
/// an in-memory node (possibly not yet written).
#[derive(Clone, Debug)]
pub enum Link {
    Stored(Hash),
    Loaded(Arc<NodeCell>),
}

impl Link {
    /// The hash, if known without writing anything.
    pub fn known_hash(&self) -> Option<Hash> {
        match self {
            Link::Stored(hash) => Some(*hash),
            Link::Loaded(cell) => cell.hash(),
        }
    }

    /// A link to a new empty directory.
    pub fn empty_dir() -> Link {
        Link::Loaded(Arc::new(NodeCell::new(Node::Leaf(Leaf {
            entries: Vec::new(),
        }))))
    }
}

/// A decoded or in-memory directory node with its hash, once known.
///
/// Invariant: when `hash` is set, the node's encoding hashes to it and has
/// been handed to the pack (so anything referring to the hash can be written).
#[derive(Debug)]
pub struct NodeCell {
    pub node: Node,
    hash: OnceLock<Hash>,
}

impl NodeCell {
    pub fn new(node: Node) -> NodeCell {
        NodeCell {
            node,
            hash: OnceLock::new(),
        }
    }

    pub fn stored(node: Node, hash: Hash) -> NodeCell {
        let cell = NodeCell::new(node);
        cell.hash.set(hash).expect("fresh cell");
        cell
    }

    pub fn hash(&self) -> Option<Hash> {
        self.hash.get().copied()
    }

    /// Records the hash after the node was written.
    pub fn set_hash(&self, hash: Hash) {
        let stored = *self.hash.get_or_init(|| hash);
        assert_eq!(stored, hash, "a node's hash cannot change");
    }
}

#[derive(Clone, Debug)]
pub enum Node {
    Leaf(Leaf),
    Branch(Branch),
}

impl Node {
    /// Entries in the subtree.
    pub fn count(&self) -> u64 {
        match self {
            Node::Leaf(leaf) => leaf.entries.len() as u64,
            Node::Branch(branch) => branch.children.iter().map(|c| c.count).sum(),
        }
    }

    /// Items directly in this node.
    pub fn items(&self) -> usize {
        match self {
            Node::Leaf(leaf) => leaf.entries.len(),
            Node::Branch(branch) => branch.children.len(),
        }
    }

    pub fn level(&self) -> u8 {
        match self {
            Node::Leaf(_) => 0,
            Node::Branch(branch) => branch.level,
        }
    }

    /// Name of the last entry in the subtree (`None` for an empty leaf).
    pub fn last_name(&self) -> Option<&Name> {
        match self {
            Node::Leaf(leaf) => leaf.entries.last().map(|e| &e.name),
            Node::Branch(branch) => branch.children.last().map(|c| &c.last),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Leaf {
    /// Sorted by name, names unique.
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub struct Branch {
    /// 1 for a branch over leaves, and so on up.
    pub level: u8,
    /// Sorted by `last`, each child covering the names after the previous
    /// child's `last` up to its own.
    pub children: Vec<Child>,
}

/// One child of a branch: a node one level down.
#[derive(Clone, Debug)]
pub struct Child {
    /// The last name in the child's subtree.
    pub last: Name,
    /// Entries in the child's subtree.
    pub count: u64,
    pub link: Link,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Name,
    /// Revision of the last change to this key (or, for a directory, to anything below it).
    pub revision: u64,
    pub value: EntryValue,
}

#[derive(Clone, Debug)]
pub enum EntryValue {
    Inline(Bytes),
    /// A value held in one chunk blob.
    Blob {
        hash: Hash,
        size: u64,
    },
    /// A value held in several chunks listed by a chunk-list tree.
    Chunked {
        list: Hash,
        size: u64,
    },
    /// A sub-directory: its root node and its number of direct entries.
    Dir {
        root: Link,
        count: u64,
    },
}

impl EntryValue {
    pub fn is_dir(&self) -> bool {
        matches!(self, EntryValue::Dir { .. })
    }

    /// Size of a value in bytes (`None` for a directory).
    pub fn size(&self) -> Option<u64> {
        match self {
            EntryValue::Inline(bytes) => Some(bytes.len() as u64),
            EntryValue::Blob { size, .. } | EntryValue::Chunked { size, .. } => Some(*size),
            EntryValue::Dir { .. } => None,
        }
    }
}

/// One level of a chunk-list tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    /// 0: entries are data chunks; n > 0: entries are chunk lists of level n - 1.
    pub level: u8,
    /// (hash, bytes covered).
    pub entries: Vec<(Hash, u64)>,
}

// ---------------------------------------------------------------- encoding

/// Encodes a node. `child` returns the hash of a linked node; every link
/// must already have one (children are written before their parents).
pub fn encode_node(node: &Node, child: &mut dyn FnMut(&Link) -> Hash) -> Vec<u8> {
    match node {
        Node::Leaf(leaf) => {
            // Sized exactly: a leaf of inline values grew by doubling three
            // times, copying itself each time, in every flush.
            let len = 6 + leaf.entries.iter().map(encoded_entry_len).sum::<usize>();
            let mut out = Vec::with_capacity(len);
            out.extend_from_slice(&[TAG_LEAF, OBJECT_VERSION]);
            out.extend_from_slice(&(leaf.entries.len() as u32).to_le_bytes());
            for entry in &leaf.entries {
                encode_entry(entry, child, &mut out);
            }
            debug_assert_eq!(out.len(), len, "a leaf's encoded length");
            out
        }
        Node::Branch(branch) => {
            let len = 7 + branch
                .children
                .iter()
                .map(|c| 2 + c.last.len() + 8 + HASH_BYTES)
                .sum::<usize>();
            let mut out = Vec::with_capacity(len);
            out.extend_from_slice(&[TAG_BRANCH, OBJECT_VERSION, branch.level]);
            out.extend_from_slice(&(branch.children.len() as u32).to_le_bytes());
            for c in &branch.children {
                out.extend_from_slice(&(c.last.len() as u16).to_le_bytes());
                out.extend_from_slice(c.last.as_bytes());
                out.extend_from_slice(&c.count.to_le_bytes());
                out.extend_from_slice(child(&c.link).as_bytes());
            }
            debug_assert_eq!(out.len(), len, "a branch's encoded length");
            out
        }
    }
}

/// Bytes [`encode_entry`] writes for `entry`.
fn encoded_entry_len(entry: &Entry) -> usize {
    let payload = match &entry.value {
        EntryValue::Inline(bytes) => 4 + bytes.len(),
        EntryValue::Blob { .. } | EntryValue::Chunked { .. } | EntryValue::Dir { .. } => {
            HASH_BYTES + 8
        }
    };
    2 + entry.name.len() + 8 + 1 + payload
}

fn encode_entry(entry: &Entry, child: &mut dyn FnMut(&Link) -> Hash, out: &mut Vec<u8>) {
    out.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
    out.extend_from_slice(entry.name.as_bytes());
    out.extend_from_slice(&entry.revision.to_le_bytes());
    match &entry.value {
        EntryValue::Inline(bytes) => {
            out.push(1);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        EntryValue::Blob { hash, size } => {
            out.push(2);
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
        EntryValue::Chunked { list, size } => {
            out.push(3);
            out.extend_from_slice(list.as_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
        EntryValue::Dir { root, count } => {
            out.push(4);
            out.extend_from_slice(child(root).as_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
    }
}

pub fn encode_chunk_list(list: &ChunkList) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + list.entries.len() * (HASH_BYTES + 8));
    out.extend_from_slice(&[TAG_CHUNK_LIST, OBJECT_VERSION, list.level]);
    out.extend_from_slice(&(list.entries.len() as u32).to_le_bytes());
    for (hash, size) in &list.entries {
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(&size.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------- decoding

/// A bounds-checked reader over an object's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

type DecodeResult<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated: needs {n} bytes at offset {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn hash(&mut self) -> DecodeResult<Hash> {
        Ok(Hash::from_slice(self.take(HASH_BYTES)?).expect("32 bytes"))
    }
    fn finish(&self) -> DecodeResult<()> {
        if self.at != self.bytes.len() {
            return Err(format!("{} trailing bytes", self.bytes.len() - self.at));
        }
        Ok(())
    }
    fn header(&mut self, tag: u8) -> DecodeResult<()> {
        let found = self.u8()?;
        if found != tag {
            return Err(format!("object tag {found:#04x}, expected {tag:#04x}"));
        }
        let version = self.u8()?;
        if version != OBJECT_VERSION {
            return Err(format!("object version {version} is not supported"));
        }
        Ok(())
    }
}

/// What kind of object a blob's first byte claims to be.
pub fn tag_of(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

/// Decodes a directory node (leaf or branch).
/// What a blob holds, as far as a collection must follow its references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// A directory node: it refers to its children and its entries' values.
    Node,
    /// A chunk list: it refers to chunks or lower lists.
    ChunkList,
    /// Value bytes: no references.
    Data,
}

/// The blobs an encoded directory node refers to, without decoding it:
/// a collection reads every retained tree, and building each node (names,
/// copies of inline values) cost far more than finding its few references.
/// Checks the structure as far as it reads it; not a substitute for
/// [`decode_node`].
pub fn node_references(bytes: &[u8], found: &mut dyn FnMut(Hash, BlobKind)) -> DecodeResult<()> {
    let mut r = Reader { bytes, at: 0 };
    let skip_name = |r: &mut Reader<'_>| -> DecodeResult<()> {
        let len = r.u16()? as usize;
        r.take(len).map(drop)
    };
    match tag_of(bytes) {
        Some(TAG_LEAF) => {
            r.header(TAG_LEAF)?;
            for _ in 0..r.u32()? {
                skip_name(&mut r)?;
                r.u64()?;
                match r.u8()? {
                    1 => {
                        let len = r.u32()? as usize;
                        r.take(len)?;
                    }
                    2 => {
                        found(r.hash()?, BlobKind::Data);
                        r.u64()?;
                    }
                    3 => {
                        found(r.hash()?, BlobKind::ChunkList);
                        r.u64()?;
                    }
                    4 => {
                        found(r.hash()?, BlobKind::Node);
                        r.u64()?;
                    }
                    kind => return Err(format!("unknown entry kind {kind}")),
                }
            }
        }
        Some(TAG_BRANCH) => {
            r.header(TAG_BRANCH)?;
            r.u8()?;
            for _ in 0..r.u32()? {
                skip_name(&mut r)?;
                r.u64()?;
                found(r.hash()?, BlobKind::Node);
            }
        }
        Some(tag) => return Err(format!("object tag {tag:#04x} is not a directory node")),
        None => return Err("empty object".into()),
    }
    r.finish()
}

pub fn decode_node(bytes: &[u8]) -> DecodeResult<Node> {
    match tag_of(bytes) {
        Some(TAG_LEAF) => decode_leaf(bytes).map(Node::Leaf),
        Some(TAG_BRANCH) => decode_branch(bytes).map(Node::Branch),
        Some(tag) => Err(format!("object tag {tag:#04x} is not a directory node")),
        None => Err("empty object".into()),
    }
}

fn decode_leaf(bytes: &[u8]) -> DecodeResult<Leaf> {
    let mut r = Reader { bytes, at: 0 };
    r.header(TAG_LEAF)?;
    let count = r.u32()? as usize;
    if count > ITEMS_MAX {
        return Err(format!("leaf holds {count} entries, more than {ITEMS_MAX}"));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = decode_entry(&mut r)?;
        if let Some(previous) = entries.last() {
            if previous.name >= entry.name {
                return Err(format!(
                    "entries out of order: {:?} before {:?}",
                    previous.name, entry.name
                ));
            }
        }
        entries.push(entry);
    }
    r.finish()?;
    Ok(Leaf { entries })
}

fn decode_name(r: &mut Reader<'_>) -> DecodeResult<Name> {
    let len = r.u16()? as usize;
    let name = std::str::from_utf8(r.take(len)?).map_err(|_| "name is not UTF-8".to_string())?;
    validate_name(name).map_err(|reason| format!("bad name {name:?}: {reason}"))?;
    Ok(Name::new(name))
}

fn decode_entry(r: &mut Reader<'_>) -> DecodeResult<Entry> {
    let name = decode_name(r)?;
    let revision = r.u64()?;
    let value = match r.u8()? {
        1 => {
            let len = r.u32()? as usize;
            if len > INLINE_VALUE_BYTES_MAX {
                return Err(format!(
                    "inline value of {len} bytes exceeds {INLINE_VALUE_BYTES_MAX}"
                ));
            }
            EntryValue::Inline(Bytes::copy_from_slice(r.take(len)?))
        }
        2 => EntryValue::Blob {
            hash: r.hash()?,
            size: r.u64()?,
        },
        3 => EntryValue::Chunked {
            list: r.hash()?,
            size: r.u64()?,
        },
        4 => EntryValue::Dir {
            root: Link::Stored(r.hash()?),
            count: r.u64()?,
        },
        kind => return Err(format!("unknown entry kind {kind} for {name:?}")),
    };
    Ok(Entry {
        name,
        revision,
        value,
    })
}

fn decode_branch(bytes: &[u8]) -> DecodeResult<Branch> {
    let mut r = Reader { bytes, at: 0 };
    r.header(TAG_BRANCH)?;
    let level = r.u8()?;
    if level == 0 {
        return Err("branch at level 0".into());
    }
    let count = r.u32()? as usize;
    if count == 0 || count > ITEMS_MAX {
        return Err(format!(
            "branch with {count} children (1..={ITEMS_MAX} allowed)"
        ));
    }
    let mut children: Vec<Child> = Vec::with_capacity(count);
    for _ in 0..count {
        let last = decode_name(&mut r)?;
        let entries = r.u64()?;
        let link = Link::Stored(r.hash()?);
        if let Some(previous) = children.last() {
            if previous.last >= last {
                return Err(format!(
                    "children out of order: {:?} before {:?}",
                    previous.last, last
                ));
            }
        }
        if entries == 0 {
            return Err(format!("child ending at {last:?} claims no entries"));
        }
        children.push(Child {
            last,
            count: entries,
            link,
        });
    }
    r.finish()?;
    Ok(Branch { level, children })
}

pub fn decode_chunk_list(bytes: &[u8]) -> DecodeResult<ChunkList> {
    let mut r = Reader { bytes, at: 0 };
    r.header(TAG_CHUNK_LIST)?;
    let level = r.u8()?;
    let count = r.u32()? as usize;
    if count == 0 || count > CHUNK_LIST_ENTRIES_MAX {
        return Err(format!(
            "chunk list with {count} entries (1..={CHUNK_LIST_ENTRIES_MAX} allowed)"
        ));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push((r.hash()?, r.u64()?));
    }
    r.finish()?;
    Ok(ChunkList { level, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(names: &[&str]) -> Node {
        Node::Leaf(Leaf {
            entries: names
                .iter()
                .map(|n| Entry {
                    name: Name::from(*n),
                    revision: 7,
                    value: EntryValue::Inline(Bytes::from_static(b"v")),
                })
                .collect(),
        })
    }

    fn no_children(_: &Link) -> Hash {
        unreachable!("no links")
    }

    #[test]
    fn leaf_round_trip() {
        let node = leaf(&["a", "b", "c"]);
        let bytes = encode_node(&node, &mut no_children);
        let Node::Leaf(decoded) = decode_node(&bytes).unwrap() else {
            panic!("not a leaf")
        };
        assert_eq!(decoded.entries.len(), 3);
        assert_eq!(&*decoded.entries[1].name, "b");
        assert_eq!(encode_node(&Node::Leaf(decoded), &mut no_children), bytes);
    }

    #[test]
    fn branch_round_trip() {
        let child = |last: &str, count| Child {
            last: Name::from(last),
            count,
            link: Link::Stored(Hash::of(last.as_bytes())),
        };
        let node = Node::Branch(Branch {
            level: 2,
            children: vec![child("m", 40), child("z", 3)],
        });
        let bytes = encode_node(&node, &mut |link| link.known_hash().unwrap());
        let Node::Branch(decoded) = decode_node(&bytes).unwrap() else {
            panic!("not a branch")
        };
        assert_eq!(decoded.level, 2);
        assert_eq!(decoded.children[1].count, 3);
        assert_eq!(Node::Branch(decoded).count(), 43);
    }

    #[test]
    fn node_references_finds_what_decoding_finds() {
        let h = |text: &str| Hash::of(text.as_bytes());
        let entry = |name: &str, value| Entry {
            name: Name::from(name),
            revision: 3,
            value,
        };
        let leaf = Node::Leaf(Leaf {
            entries: vec![
                entry("a", EntryValue::Inline(Bytes::from_static(b"inline"))),
                entry(
                    "b",
                    EntryValue::Blob {
                        hash: h("b"),
                        size: 9,
                    },
                ),
                entry(
                    "c",
                    EntryValue::Chunked {
                        list: h("c"),
                        size: 99,
                    },
                ),
                entry(
                    "d",
                    EntryValue::Dir {
                        root: Link::Stored(h("d")),
                        count: 2,
                    },
                ),
            ],
        });
        let branch = Node::Branch(Branch {
            level: 1,
            children: vec![
                Child {
                    last: Name::from("m"),
                    count: 4,
                    link: Link::Stored(h("m")),
                },
                Child {
                    last: Name::from("z"),
                    count: 1,
                    link: Link::Stored(h("z")),
                },
            ],
        });
        let cases = [
            (
                leaf,
                vec![
                    (h("b"), BlobKind::Data),
                    (h("c"), BlobKind::ChunkList),
                    (h("d"), BlobKind::Node),
                ],
            ),
            (
                branch,
                vec![(h("m"), BlobKind::Node), (h("z"), BlobKind::Node)],
            ),
        ];
        for (node, expected) in cases {
            let bytes = encode_node(&node, &mut |link| link.known_hash().unwrap());
            let mut found = Vec::new();
            node_references(&bytes, &mut |hash, kind| found.push((hash, kind))).unwrap();
            assert_eq!(found, expected);
            // Damage is an error, never a panic.
            for cut in 0..bytes.len() {
                assert!(
                    node_references(&bytes[..cut], &mut |_, _| {}).is_err(),
                    "cut at {cut}"
                );
            }
        }
        let list = encode_chunk_list(&ChunkList {
            level: 0,
            entries: vec![(h("x"), 1)],
        });
        assert!(
            node_references(&list, &mut |_, _| {}).is_err(),
            "a chunk list is no node"
        );
    }

    #[test]
    fn unsorted_leaf_is_rejected() {
        let bytes = encode_node(&leaf(&["b", "a"]), &mut no_children);
        assert!(decode_node(&bytes).unwrap_err().contains("out of order"));
    }

    #[test]
    fn every_truncation_and_flip_is_an_error_not_a_panic() {
        let node = leaf(&["alpha", "beta"]);
        let bytes = encode_node(&node, &mut no_children);
        for cut in 0..bytes.len() {
            assert!(decode_node(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                let _ = decode_node(&damaged);
                let _ = decode_chunk_list(&damaged);
            }
        }
    }

    #[test]
    fn name_order_matches_text_order() {
        let texts = [
            "",
            "a",
            "ab",
            "abc",
            "b",
            "k000000001",
            "k000000010",
            "exactly-sixteen!",
            "exactly-sixteen!a",
            "exactly-sixteen",
            "a-very-long-name-beyond-the-prefix-1",
            "a-very-long-name-beyond-the-prefix-2",
            "a-very-long-name-beyond",
            "\u{e9}t\u{e9}",
            "z",
        ];
        for a in texts.iter().filter(|t| !t.is_empty()) {
            for b in texts.iter().filter(|t| !t.is_empty()) {
                let (na, nb) = (Name::new(a), Name::new(b));
                assert_eq!(na.cmp(&nb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(na.cmp_key(&NameKey::new(b)), a.cmp(b), "{a:?} vs key {b:?}");
                assert_eq!(na == nb, a == b);
            }
        }
    }

    #[test]
    fn chunk_list_round_trip() {
        let list = ChunkList {
            level: 0,
            entries: vec![(Hash::of(b"a"), 10), (Hash::of(b"b"), 20)],
        };
        assert_eq!(decode_chunk_list(&encode_chunk_list(&list)).unwrap(), list);
    }

    #[test]
    fn boundaries_are_about_one_in_target_and_independent_per_level() {
        let names: Vec<Name> = (0..64_000).map(|i| Name::new(&format!("k{i}"))).collect();
        for level in 0..3 {
            let cuts = names.iter().filter(|n| n.is_boundary(level)).count();
            let expected = names.len() / ITEMS_TARGET;
            assert!(
                cuts > expected * 9 / 10 && cuts < expected * 11 / 10,
                "level {level}: {cuts}"
            );
        }
        // Independent levels: a name is a boundary at both about 1 / TARGET^2 of the time.
        let both = names
            .iter()
            .filter(|n| n.is_boundary(0) && n.is_boundary(1))
            .count();
        let independent = names.len() / (ITEMS_TARGET * ITEMS_TARGET);
        assert!(
            both > independent * 3 / 4 && both < independent * 5 / 4,
            "levels must use independent bits: {both}"
        );
    }
}
