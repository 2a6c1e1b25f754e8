//! The objects of the Merkle tree and their byte encoding.
//!
//! Every object is one blob, named by the BLAKE3 hash of its encoding.
//!
//! **Directories** are hash array mapped tries (HAMTs) over the BLAKE3 hash
//! of each entry's name, so a directory of a million entries is rewritten in
//! O(log n) bytes per change. The shape is *canonical*: it depends only on
//! the set of entries, never on the order they were written in, so equal
//! directories have equal hashes on every replica.
//!
//! - A node at depth `d` holding `n` entries is a **leaf** (entries sorted by
//!   name) when `n <= LEAF_ENTRIES_MAX` or `d == DEPTH_MAX`, otherwise a
//!   **branch** whose children are selected by the 5 bits of the name hash
//!   at offset `5 * d`.
//! - Only the root of an empty directory is an empty leaf, and empty
//!   directories other than the store root are removed.
//!
//! **Values** up to [`INLINE_VALUE_BYTES_MAX`] live inside the directory entry.
//! Larger values are cut into content-defined chunks (so equal data dedups):
//! a one-chunk value points at its chunk; a longer one at a chunk list, a
//! small tree of chunk hashes with sizes.
//!
//! ```text
//! leaf:       0x01 version depth:u8 count:u32 entry*
//! branch:     0x02 version depth:u8 count:u64 bitmap:u32 child-hash*32
//! chunk list: 0x03 version level:u8 count:u32 (hash*32 size:u64)*
//! entry:      name_len:u16 name revision:u64 kind:u8 payload
//!   kind 1 inline   len:u32 bytes
//!   kind 2 blob     hash*32 size:u64      (one chunk)
//!   kind 3 chunked  hash*32 size:u64      (chunk list)
//!   kind 4 dir      hash*32 count:u64     (HAMT root, direct entries)
//! ```
//! Integers are little-endian. Chunks themselves are raw bytes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::hash::{Hash, HASH_BYTES};
use crate::key::validate_name;

/// Version byte written after each object tag.
pub const OBJECT_VERSION: u8 = 1;
pub const TAG_LEAF: u8 = 0x01;
pub const TAG_BRANCH: u8 = 0x02;
pub const TAG_CHUNK_LIST: u8 = 0x03;

/// Most entries a HAMT leaf holds before it splits into a branch.
pub const LEAF_ENTRIES_MAX: usize = 32;
/// Bits of the name hash consumed per HAMT level.
pub const BRANCH_BITS: u32 = 5;
/// Children of a branch.
pub const BRANCH_FANOUT: usize = 1 << BRANCH_BITS;
/// Deepest HAMT level; the name hash has 256 bits, enough for 51 levels.
pub const DEPTH_MAX: u8 = 48;
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

const _: () = assert!(BRANCH_FANOUT <= 32, "the branch bitmap is a u32");
const _: () = assert!((DEPTH_MAX as u32 + 1) * BRANCH_BITS <= (HASH_BYTES as u32) * 8);
const _: () = assert!(CHUNK_BYTES_MAX <= BLOB_BYTES_MAX);
const _: () = assert!(INLINE_VALUE_BYTES_MAX < CHUNK_BYTES_MIN);
// Largest leaf: every entry at the name and inline limits, plus headers.
const _: () = assert!(
    LEAF_ENTRIES_MAX * (2 + 255 + 8 + 1 + 4 + INLINE_VALUE_BYTES_MAX) + 16 <= BLOB_BYTES_MAX
);
const _: () = assert!(CHUNK_LIST_ENTRIES_MAX * (HASH_BYTES + 8) + 16 <= BLOB_BYTES_MAX);

/// A directory entry name (one path segment).
pub type Name = Arc<str>;

/// A reference to a HAMT node: by hash (stored, loaded on demand) or to an
/// in-memory node (possibly not yet written).
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
            depth: 0,
            entries: Vec::new(),
        }))))
    }
}

/// A decoded or in-memory HAMT node with its hash, once known.
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

impl Clone for NodeCell {
    /// A clone is a new, unwritten node that starts equal to this one.
    fn clone(&self) -> NodeCell {
        NodeCell::new(self.node.clone())
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
            Node::Branch(branch) => branch.count,
        }
    }

    pub fn depth(&self) -> u8 {
        match self {
            Node::Leaf(leaf) => leaf.depth,
            Node::Branch(branch) => branch.depth,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Leaf {
    pub depth: u8,
    /// Sorted by name, names unique.
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub struct Branch {
    pub depth: u8,
    /// Entries in the whole subtree; always more than [`LEAF_ENTRIES_MAX`].
    pub count: u64,
    /// Sorted by slot, slots unique, each below [`BRANCH_FANOUT`].
    pub children: Vec<(u8, Link)>,
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
    /// A sub-directory: its HAMT root and its number of direct entries.
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

/// The HAMT slot of a name hash at `depth`.
pub fn slot(name_hash: &[u8; HASH_BYTES], depth: u8) -> u8 {
    let bit = depth as usize * BRANCH_BITS as usize;
    let byte = bit / 8;
    let shift = bit % 8;
    let window =
        u16::from(name_hash[byte]) | (u16::from(*name_hash.get(byte + 1).unwrap_or(&0)) << 8);
    ((window >> shift) as u8) & (BRANCH_FANOUT as u8 - 1)
}

/// The hash used to place a name in the HAMT.
pub fn name_hash(name: &str) -> [u8; HASH_BYTES] {
    *blake3::hash(name.as_bytes()).as_bytes()
}

// ---------------------------------------------------------------- encoding

/// Encodes a node. `child` returns the hash of a linked node; every link
/// must already have one (children are written before their parents).
pub fn encode_node(node: &Node, child: &mut dyn FnMut(&Link) -> Hash) -> Vec<u8> {
    match node {
        Node::Leaf(leaf) => {
            let mut out = Vec::with_capacity(16 + leaf.entries.len() * 64);
            out.extend_from_slice(&[TAG_LEAF, OBJECT_VERSION, leaf.depth]);
            out.extend_from_slice(&(leaf.entries.len() as u32).to_le_bytes());
            for entry in &leaf.entries {
                encode_entry(entry, child, &mut out);
            }
            out
        }
        Node::Branch(branch) => {
            let mut out = Vec::with_capacity(16 + branch.children.len() * HASH_BYTES);
            out.extend_from_slice(&[TAG_BRANCH, OBJECT_VERSION, branch.depth]);
            out.extend_from_slice(&branch.count.to_le_bytes());
            let bitmap = branch
                .children
                .iter()
                .fold(0u32, |map, (slot, _)| map | 1 << slot);
            out.extend_from_slice(&bitmap.to_le_bytes());
            for (_, link) in &branch.children {
                out.extend_from_slice(child(link).as_bytes());
            }
            out
        }
    }
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
    fn header(&mut self, tag: u8) -> DecodeResult<u8> {
        let found = self.u8()?;
        if found != tag {
            return Err(format!("object tag {found:#04x}, expected {tag:#04x}"));
        }
        let version = self.u8()?;
        if version != OBJECT_VERSION {
            return Err(format!("object version {version} is not supported"));
        }
        self.u8()
    }
}

/// What kind of object a blob's first byte claims to be.
pub fn tag_of(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

/// Decodes a directory node (leaf or branch).
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
    let depth = r.header(TAG_LEAF)?;
    check_depth(depth)?;
    let count = r.u32()? as usize;
    if count > LEAF_ENTRIES_MAX && depth < DEPTH_MAX {
        return Err(format!(
            "leaf holds {count} entries, more than {LEAF_ENTRIES_MAX}"
        ));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(count.min(LEAF_ENTRIES_MAX));
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
    Ok(Leaf { depth, entries })
}

fn decode_entry(r: &mut Reader<'_>) -> DecodeResult<Entry> {
    let name_len = r.u16()? as usize;
    let name = std::str::from_utf8(r.take(name_len)?)
        .map_err(|_| "entry name is not UTF-8".to_string())?;
    validate_name(name).map_err(|reason| format!("bad entry name {name:?}: {reason}"))?;
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
        name: Name::from(name),
        revision,
        value,
    })
}

fn decode_branch(bytes: &[u8]) -> DecodeResult<Branch> {
    let mut r = Reader { bytes, at: 0 };
    let depth = r.header(TAG_BRANCH)?;
    check_depth(depth)?;
    if depth >= DEPTH_MAX {
        return Err(format!(
            "branch at depth {depth}, the deepest level must be a leaf"
        ));
    }
    let count = r.u64()?;
    let bitmap = r.u32()?;
    let mut children = Vec::with_capacity(bitmap.count_ones() as usize);
    for slot in 0..BRANCH_FANOUT as u8 {
        if bitmap & (1 << slot) != 0 {
            children.push((slot, Link::Stored(r.hash()?)));
        }
    }
    r.finish()?;
    if children.is_empty() {
        return Err("branch without children".into());
    }
    Ok(Branch {
        depth,
        count,
        children,
    })
}

fn check_depth(depth: u8) -> DecodeResult<()> {
    if depth > DEPTH_MAX {
        return Err(format!("depth {depth} exceeds {DEPTH_MAX}"));
    }
    Ok(())
}

pub fn decode_chunk_list(bytes: &[u8]) -> DecodeResult<ChunkList> {
    let mut r = Reader { bytes, at: 0 };
    let level = r.header(TAG_CHUNK_LIST)?;
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
            depth: 0,
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
    fn chunk_list_round_trip() {
        let list = ChunkList {
            level: 0,
            entries: vec![(Hash::of(b"a"), 10), (Hash::of(b"b"), 20)],
        };
        assert_eq!(decode_chunk_list(&encode_chunk_list(&list)).unwrap(), list);
    }

    #[test]
    fn slots_cover_all_bits() {
        let hash = [0xffu8; HASH_BYTES];
        for depth in 0..=DEPTH_MAX {
            assert_eq!(slot(&hash, depth), 31);
        }
        let zero = [0u8; HASH_BYTES];
        assert_eq!(slot(&zero, 3), 0);
        let mut one = [0u8; HASH_BYTES];
        one[0] = 0b0010_0000; // bit 5: the lowest bit of depth 1
        assert_eq!(slot(&one, 0), 0);
        assert_eq!(slot(&one, 1), 1);
    }
}
