//! Verification: walk a tree from its root and check every object.
//!
//! ## Guarantees
//! - With [`Depth::Full`], every blob reachable from the root is read and
//!   hashed: directory nodes, chunk lists **and data chunks** (bit rot in a
//!   value is found, not only a missing blob). A blob shared by many keys is
//!   read once, but its damage is reported at every key that reaches it.
//! - Every object is checked for the type expected where it is referenced
//!   (a directory node where a directory is linked, a chunk list where a
//!   chunked value points), and decodable objects are checked against each
//!   other: child counts and last names, node levels, value sizes, names in
//!   order across nodes, and a directory's entry count in its parent.
//! - Directories whose own nodes are all readable are compared with the
//!   canonical tree of their entries; a difference is a warning.
//! - Verification never writes and never panics on damaged data: every
//!   problem becomes a [`Finding`].
//!
//! [`Depth::Fast`] (the start-up check) reads and hashes directory nodes and
//! chunk lists but only checks that data chunks are present.
//!
//! A [`Verifier`] keeps its verdicts across calls, so checking several
//! checkpoints (rollback) reads each shared object once.
//!
//! For speed, a full verification first collects every data chunk the tree
//! reaches, then reads them in file order and hashes them on up to
//! [`VERIFY_THREADS_MAX`] threads; the walk that follows only looks up their
//! verdicts. Directory nodes and chunk lists are verified during the walk.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use keel_store::key::KEY_SEGMENTS_MAX;
use keel_store::object::{decode_chunk_list, tag_of, Node, TAG_BRANCH, TAG_CHUNK_LIST, TAG_LEAF};
use keel_store::object::{Entry, EntryValue, Link, Name, NodeCell};
use keel_store::tree::{self, Objects};
use keel_store::{Hash, RecoveryReport, StoreError};
use serde::Serialize;

use crate::finding::{
    child_path, Finding, FindingKind, ObjectRole, Severity, ROOT_PATH, STORE_PATH,
};
use crate::salvage::readable_values;

/// How much verification reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    /// Read and hash every reachable blob, data chunks included.
    Full,
    /// Read and hash directory nodes and chunk lists; data chunks need only be present.
    Fast,
}

/// The tree being verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub root: Hash,
    pub revision: u64,
    /// The checkpoint holding this root, if one does.
    pub checkpoint: Option<u64>,
    pub timestamp_ms: Option<u64>,
}

/// Work done by a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyStats {
    /// Blobs read (directory nodes, chunk lists, chunks); each once.
    pub objects: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
    /// Values and directories visited.
    pub values: u64,
    pub directories: u64,
    pub elapsed_ms: u64,
}

/// What a verification found.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub target: Target,
    pub depth: Depth,
    pub findings: Vec<Finding>,
    pub stats: VerifyStats,
}

impl Verification {
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    /// True when no error was found (warnings allowed).
    pub fn is_clean(&self) -> bool {
        self.errors() == 0
    }

    /// True when the root directory itself cannot be read.
    pub fn root_unreadable(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.is_error() && f.path == ROOT_PATH && f.role == ObjectRole::DirectoryRoot)
    }
}

/// Receives what verification sees, for progress bars and `-v`.
pub trait Observer {
    /// A key or directory path was visited.
    fn visit(&mut self, _path: &str) {}
    /// Called now and then with the work done so far.
    fn progress(&mut self, _stats: &VerifyStats) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Why a blob could not be used.
#[derive(Clone, Debug)]
struct Problem {
    blob: Hash,
    kind: FindingKind,
    role: ObjectRole,
    detail: String,
}

/// A chunk list's verdict, including every list and chunk below it.
#[derive(Debug)]
struct ListVerdict {
    /// `None` when the list itself is unreadable.
    level: Option<u8>,
    /// Bytes the list's entries claim to cover.
    covered: u64,
    problems: Vec<Problem>,
}

/// Emit progress at most this often (objects).
const PROGRESS_EVERY_OBJECTS: u64 = 256;
/// Threads that read and hash data chunks in a full verification.
pub const VERIFY_THREADS_MAX: usize = 4;
/// Chunks handed to the hashing threads at once (progress is reported between batches).
const CHUNK_BATCH_ITEMS: usize = 1024;
/// Largest run of neighbouring chunks read with one `pread`.
const SPAN_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Bytes of other records tolerated between two chunks of one run.
const SPAN_GAP_BYTES_MAX: u64 = 64 * 1024;
const _: () = assert!(SPAN_GAP_BYTES_MAX < SPAN_BYTES_MAX);

/// Walks trees and remembers what it verified.
pub struct Verifier<'a> {
    objects: &'a Objects,
    depth: Depth,
    /// Skip re-walking directories already verified clean (not with `-v`,
    /// which must print every path).
    reuse_clean_directories: bool,
    chunks: HashMap<Hash, Result<u64, Problem>>,
    lists: HashMap<Hash, Rc<ListVerdict>>,
    clean_directories: HashSet<Hash>,
    /// Threads hashing data chunks in a full verification.
    threads: usize,
    stats: VerifyStats,
    findings: Vec<Finding>,
    last_progress: u64,
}

/// What walking one node of a directory found.
struct NodeSummary {
    count: u64,
    first: Option<Name>,
    last: Option<Name>,
}

impl<'a> Verifier<'a> {
    pub fn new(objects: &'a Objects, depth: Depth, verbose: bool) -> Verifier<'a> {
        Verifier {
            objects,
            depth,
            reuse_clean_directories: !verbose,
            chunks: HashMap::new(),
            lists: HashMap::new(),
            clean_directories: HashSet::new(),
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, VERIFY_THREADS_MAX),
            stats: VerifyStats::default(),
            findings: Vec::new(),
            last_progress: 0,
        }
    }

    pub fn depth(&self) -> Depth {
        self.depth
    }

    /// Sets how many threads hash data chunks (1 to [`VERIFY_THREADS_MAX`]).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.clamp(1, VERIFY_THREADS_MAX);
    }

    /// Verifies the tree rooted at `target.root`.
    pub fn verify(&mut self, target: &Target, observer: &mut dyn Observer) -> Verification {
        let started = Instant::now();
        let before = self.stats.clone();
        self.findings.clear();
        if self.depth == Depth::Full {
            self.prefetch_chunks(target.root, observer);
        }
        self.walk_dir(ROOT_PATH, target.root, None, 0, observer);
        observer.progress(&self.stats);
        let mut stats = VerifyStats {
            objects: self.stats.objects - before.objects,
            bytes: self.stats.bytes - before.bytes,
            values: self.stats.values - before.values,
            directories: self.stats.directories - before.directories,
            elapsed_ms: 0,
        };
        stats.elapsed_ms = started.elapsed().as_millis() as u64;
        Verification {
            target: target.clone(),
            depth: self.depth,
            findings: std::mem::take(&mut self.findings),
            stats,
        }
    }

    fn push(&mut self, path: &str, problem: Problem, severity: Severity, lost: Option<u64>) {
        self.findings.push(Finding {
            path: path.to_string(),
            kind: problem.kind,
            severity,
            role: problem.role,
            blob: Some(problem.blob),
            detail: problem.detail,
            lost_entries: lost,
        });
    }

    fn structure(&mut self, path: &str, blob: Hash, role: ObjectRole, detail: String) {
        let problem = Problem {
            blob,
            kind: FindingKind::Structure,
            role,
            detail,
        };
        self.push(path, problem, Severity::Error, None);
    }

    fn count_object(&mut self, bytes: u64, observer: &mut dyn Observer) {
        self.stats.objects += 1;
        self.stats.bytes += bytes;
        if self.stats.objects - self.last_progress >= PROGRESS_EVERY_OBJECTS {
            self.last_progress = self.stats.objects;
            observer.progress(&self.stats);
        }
    }

    // ------------------------------------------------------------ directories

    /// Verifies the directory at `path`; `expected_count` is its entry count
    /// as its parent states it. Returns whether it is clean.
    fn walk_dir(
        &mut self,
        path: &str,
        root: Hash,
        expected_count: Option<u64>,
        depth: usize,
        observer: &mut dyn Observer,
    ) -> bool {
        self.stats.directories += 1;
        if self.reuse_clean_directories && self.clean_directories.contains(&root) {
            return true;
        }
        let before = self.findings.len();
        if depth > KEY_SEGMENTS_MAX {
            let detail = format!("directories nested deeper than {KEY_SEGMENTS_MAX} levels");
            self.structure(path, root, ObjectRole::Directory, detail);
            return false;
        }
        let mut own_damage = false;
        let summary = self.walk_node(
            path,
            root,
            None,
            expected_count,
            depth,
            &mut own_damage,
            observer,
        );
        if let Some(summary) = &summary {
            if let Some(expected) = expected_count.filter(|&e| e != summary.count) {
                let detail = format!(
                    "its parent says {expected} entries, its nodes hold {}",
                    summary.count
                );
                self.structure(path, root, ObjectRole::Directory, detail);
                own_damage = true;
            }
            if summary.count == 0 && path != ROOT_PATH {
                self.non_canonical(path, root, "an empty directory other than the root".into());
            } else if !own_damage {
                self.check_shape(path, root);
            }
        }
        let clean = self.findings.len() == before;
        if clean {
            self.clean_directories.insert(root);
        }
        clean
    }

    fn non_canonical(&mut self, path: &str, root: Hash, detail: String) {
        let problem = Problem {
            blob: root,
            kind: FindingKind::NonCanonical,
            role: ObjectRole::Directory,
            detail,
        };
        self.push(path, problem, Severity::Warning, None);
    }

    fn check_shape(&mut self, path: &str, root: Hash) {
        match tree::check_canonical(self.objects, &Link::Stored(root)) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => self.non_canonical(path, root, reason),
            // The nodes were readable a moment ago; another failure is reported by the walk.
            Err(_) => {}
        }
    }

    /// Loads and verifies one directory node, classifying any failure.
    fn load_node(
        &mut self,
        hash: Hash,
        role: ObjectRole,
    ) -> Result<std::sync::Arc<NodeCell>, Problem> {
        match self.objects.node(&hash) {
            Ok(cell) => Ok(cell),
            Err(error) => Err(self.classify(hash, role, error, TAG_CHUNK_LIST)),
        }
    }

    /// Turns a failed load into a problem. `foreign_tag` is the tag of the
    /// object type that does not belong where `hash` is referenced.
    fn classify(
        &self,
        hash: Hash,
        role: ObjectRole,
        error: StoreError,
        foreign_tag: u8,
    ) -> Problem {
        let (kind, detail) = match error {
            StoreError::MissingBlob { .. } => (FindingKind::MissingBlob, String::new()),
            StoreError::CorruptBlob { actual, .. } => (
                FindingKind::CorruptBlob,
                format!("its bytes hash to {actual}"),
            ),
            StoreError::Undecodable { reason, .. } => {
                let tag = self.objects.pack.get(&hash).ok().and_then(|b| tag_of(&b));
                let wrong = tag == Some(foreign_tag)
                    || (foreign_tag != TAG_CHUNK_LIST
                        && matches!(tag, Some(TAG_LEAF | TAG_BRANCH)));
                if wrong {
                    let found = if foreign_tag == TAG_CHUNK_LIST {
                        "a chunk list where a directory node belongs"
                    } else {
                        "a directory node where a chunk list belongs"
                    };
                    (FindingKind::WrongType, found.to_string())
                } else if role == ObjectRole::ChunkList {
                    (FindingKind::UndecodableChunkList, reason)
                } else {
                    (FindingKind::UndecodableDirectory, reason)
                }
            }
            other => (FindingKind::MissingBlob, format!("cannot be read: {other}")),
        };
        Problem {
            blob: hash,
            kind,
            role,
            detail,
        }
    }

    /// Verifies the subtree of one node of the directory at `path`.
    #[allow(clippy::too_many_arguments)]
    fn walk_node(
        &mut self,
        path: &str,
        hash: Hash,
        expected_level: Option<u8>,
        claimed_count: Option<u64>,
        depth: usize,
        own_damage: &mut bool,
        observer: &mut dyn Observer,
    ) -> Option<NodeSummary> {
        let role = if expected_level.is_none() {
            ObjectRole::DirectoryRoot
        } else {
            ObjectRole::DirectoryNode
        };
        let cell = match self.load_node(hash, role) {
            Ok(cell) => cell,
            Err(problem) => {
                *own_damage = true;
                self.push(path, problem, Severity::Error, claimed_count);
                return None;
            }
        };
        let bytes = self
            .objects
            .pack
            .location(&hash)
            .map_or(0, |l| u64::from(l.len));
        self.count_object(bytes, observer);
        let level = cell.node.level();
        if let Some(expected) = expected_level.filter(|&e| e != level) {
            *own_damage = true;
            let detail = format!("node at level {level} where level {expected} belongs");
            self.structure(path, hash, ObjectRole::DirectoryNode, detail);
            return None;
        }
        match &cell.node {
            Node::Leaf(leaf) => {
                for entry in &leaf.entries {
                    self.walk_entry(&child_path(path, &entry.name), entry, depth, observer);
                }
                Some(NodeSummary {
                    count: leaf.entries.len() as u64,
                    first: leaf.entries.first().map(|e| e.name.clone()),
                    last: leaf.entries.last().map(|e| e.name.clone()),
                })
            }
            Node::Branch(branch) => {
                let mut previous_last: Option<Name> = None;
                let mut first = None;
                for child in &branch.children {
                    let Some(child_hash) = child.link.known_hash() else {
                        continue;
                    };
                    let summary = self.walk_node(
                        path,
                        child_hash,
                        Some(level - 1),
                        Some(child.count),
                        depth,
                        own_damage,
                        observer,
                    );
                    if let Some(summary) = summary {
                        if let Some(detail) = child_mismatch(
                            child.count,
                            &child.last,
                            &summary,
                            previous_last.as_ref(),
                        ) {
                            *own_damage = true;
                            self.structure(path, child_hash, ObjectRole::DirectoryNode, detail);
                        }
                        first = first.or(summary.first);
                    }
                    previous_last = Some(child.last.clone());
                }
                Some(NodeSummary {
                    count: cell.node.count(),
                    first,
                    last: branch.children.last().map(|c| c.last.clone()),
                })
            }
        }
    }

    fn walk_entry(&mut self, path: &str, entry: &Entry, depth: usize, observer: &mut dyn Observer) {
        observer.visit(path);
        match &entry.value {
            EntryValue::Inline(_) => self.stats.values += 1,
            EntryValue::Blob { hash, size } => {
                self.stats.values += 1;
                match self.check_chunk(*hash, observer) {
                    Ok(len) if len != *size => {
                        let detail = format!("the value claims {size} bytes, its blob holds {len}");
                        self.structure(path, *hash, ObjectRole::Value, detail);
                    }
                    Ok(_) => {}
                    Err(problem) => self.push(path, problem, Severity::Error, None),
                }
            }
            EntryValue::Chunked { list, size } => {
                self.stats.values += 1;
                let verdict = self.check_list(*list, observer);
                for problem in &verdict.problems {
                    self.push(path, problem.clone(), Severity::Error, None);
                }
                if verdict.level.is_some() && verdict.covered != *size {
                    let detail = format!(
                        "the value claims {size} bytes, its chunk list covers {}",
                        verdict.covered
                    );
                    self.structure(path, *list, ObjectRole::Value, detail);
                }
            }
            EntryValue::Dir { root, count } => {
                if let Some(root) = root.known_hash() {
                    self.walk_dir(path, root, Some(*count), depth + 1, observer);
                }
            }
        }
    }

    // ------------------------------------------------------------ values

    /// Reads (or, with [`Depth::Fast`], locates) a data chunk; returns its length.
    fn check_chunk(&mut self, hash: Hash, observer: &mut dyn Observer) -> Result<u64, Problem> {
        if let Some(verdict) = self.chunks.get(&hash) {
            return verdict.clone();
        }
        let verdict = match self.depth {
            Depth::Full => {
                let verdict = chunk_verdict(self.objects, hash);
                if let Ok(len) = verdict {
                    self.count_object(len, observer);
                }
                verdict
            }
            Depth::Fast => match self.objects.pack.location(&hash) {
                Some(location) => {
                    self.count_object(0, observer);
                    Ok(u64::from(location.len))
                }
                None => Err(Problem {
                    blob: hash,
                    kind: FindingKind::MissingBlob,
                    role: ObjectRole::Chunk,
                    detail: String::new(),
                }),
            },
        };
        self.chunks.insert(hash, verdict.clone());
        verdict
    }

    /// Verifies a chunk list and everything below it (memoised).
    fn check_list(&mut self, hash: Hash, observer: &mut dyn Observer) -> Rc<ListVerdict> {
        if let Some(verdict) = self.lists.get(&hash) {
            return verdict.clone();
        }
        let verdict = Rc::new(self.read_list(hash, observer));
        self.lists.insert(hash, verdict.clone());
        verdict
    }

    fn read_list(&mut self, hash: Hash, observer: &mut dyn Observer) -> ListVerdict {
        let unreadable = |problem: Problem| ListVerdict {
            level: None,
            covered: 0,
            problems: vec![problem],
        };
        let bytes = match self.objects.pack.get(&hash) {
            Ok(bytes) => bytes,
            Err(error) => {
                return unreadable(self.classify(hash, ObjectRole::ChunkList, error, TAG_LEAF))
            }
        };
        self.count_object(bytes.len() as u64, observer);
        let list = match decode_chunk_list(&bytes) {
            Ok(list) => list,
            Err(reason) => {
                let error = StoreError::Undecodable {
                    what: "chunk list",
                    hash,
                    reason,
                };
                return unreadable(self.classify(hash, ObjectRole::ChunkList, error, TAG_LEAF));
            }
        };
        let mut problems = Vec::new();
        for (entry, size) in &list.entries {
            if let Some(problem) = self.check_list_entry(hash, list.level, *entry, *size, observer)
            {
                problems.push(problem);
            }
            if list.level > 0 {
                problems.extend(self.check_list(*entry, observer).problems.iter().cloned());
            }
        }
        ListVerdict {
            level: Some(list.level),
            covered: list.entries.iter().map(|(_, s)| s).sum(),
            problems,
        }
    }

    /// Checks one entry of a chunk list at `level` against what it points at.
    fn check_list_entry(
        &mut self,
        list: Hash,
        level: u8,
        entry: Hash,
        size: u64,
        observer: &mut dyn Observer,
    ) -> Option<Problem> {
        let structure = |detail: String| Problem {
            blob: list,
            kind: FindingKind::Structure,
            role: ObjectRole::ChunkList,
            detail,
        };
        if level == 0 {
            return match self.check_chunk(entry, observer) {
                Ok(len) if len != size => Some(structure(format!(
                    "lists chunk {entry} as {size} bytes, it holds {len}"
                ))),
                Ok(_) => None,
                Err(problem) => Some(problem),
            };
        }
        let sub = self.check_list(entry, observer);
        match sub.level {
            None => None, // its own problems are reported by the caller
            Some(sub_level) if sub_level + 1 != level => Some(structure(format!(
                "a level-{level} list points at level-{sub_level} list {entry}"
            ))),
            Some(_) if sub.covered != size => Some(structure(format!(
                "lists {entry} as {size} bytes, it covers {}",
                sub.covered
            ))),
            Some(_) => None,
        }
    }
}

impl Verifier<'_> {
    /// Reads and hashes every data chunk reachable from `root` that has no
    /// verdict yet, in file order, on several threads.
    fn prefetch_chunks(&mut self, root: Hash, observer: &mut dyn Observer) {
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        for (_, (entry, _)) in readable_values(self.objects, &Link::Stored(root)) {
            let chunks = match entry.value {
                EntryValue::Blob { hash, .. } => vec![hash],
                EntryValue::Chunked { list, .. } => list_chunks(self.objects, list),
                _ => Vec::new(),
            };
            for hash in chunks {
                if !self.chunks.contains_key(&hash) && seen.insert(hash) {
                    wanted.push(hash);
                }
            }
        }
        let pack = &self.objects.pack;
        wanted.sort_by_key(|hash| pack.location(hash).map(|l| (l.segment, l.offset)));
        let mut readers: Vec<SegmentReader> = (0..self.threads)
            .map(|_| SegmentReader::default())
            .collect();
        for batch in wanted.chunks(CHUNK_BATCH_ITEMS * self.threads) {
            let verdicts = verify_parallel(self.objects, batch, &mut readers);
            for (hash, verdict) in batch.iter().zip(verdicts) {
                if let Ok(len) = verdict {
                    self.count_object(len, observer);
                }
                self.chunks.insert(*hash, verdict);
            }
        }
    }
}

/// Verdicts for `hashes` (in file order), computed by one thread per
/// reader, each over a contiguous part, so that each reads its part
/// forwards (and keeps reading forwards from one batch to the next).
fn verify_parallel(
    objects: &Objects,
    hashes: &[Hash],
    readers: &mut [SegmentReader],
) -> Vec<Result<u64, Problem>> {
    assert!(!readers.is_empty(), "at least one reader");
    if readers.len() == 1 || hashes.len() < 2 {
        return verify_run(objects, hashes, &mut readers[0]);
    }
    let per_thread = hashes.len().div_ceil(readers.len());
    std::thread::scope(|scope| {
        let workers: Vec<_> = hashes
            .chunks(per_thread)
            .zip(readers.iter_mut())
            .map(|(part, reader)| scope.spawn(move || verify_run(objects, part, reader)))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a hashing thread does not panic"))
            .collect()
    })
}

/// Verdicts for chunks in file order. Chunks of sealed segments are hashed
/// in place from a read-only memory map of the segment; chunks of the active
/// segment are read in runs (one `pread` for neighbours) into a reused
/// buffer. A chunk whose bytes do not hash to its name (or cannot be reached
/// that way) is read again through the pack, which gives the exact verdict.
fn verify_run(
    objects: &Objects,
    hashes: &[Hash],
    segments: &mut SegmentReader,
) -> Vec<Result<u64, Problem>> {
    let pack = &objects.pack;
    let active = pack.segment_ids().last().copied();
    let locations: Vec<_> = hashes.iter().map(|h| pack.location(h)).collect();
    let mut out = Vec::with_capacity(hashes.len());
    let mut i = 0;
    while i < hashes.len() {
        let Some(first) = locations[i] else {
            out.push(chunk_verdict(objects, hashes[i]));
            i += 1;
            continue;
        };
        let (start, mut end, mut j) = (first.offset, first.offset + u64::from(first.len), i + 1);
        while let Some(Some(next)) = locations.get(j) {
            let next_end = next.offset + u64::from(next.len);
            let joins = next.segment == first.segment
                && next.offset >= end
                && next.offset - end <= SPAN_GAP_BYTES_MAX
                && next_end - start <= SPAN_BYTES_MAX;
            if !joins {
                break;
            }
            end = next_end;
            j += 1;
        }
        let sealed = Some(first.segment) != active;
        let span = segments.span(pack, first.segment, sealed, start, end);
        for k in i..j {
            let location = locations[k].expect("runs hold located chunks");
            let at = (location.offset - start) as usize;
            let matches = span
                .is_some_and(|bytes| Hash::of(&bytes[at..at + location.len as usize]) == hashes[k]);
            out.push(if matches {
                Ok(u64::from(location.len))
            } else {
                chunk_verdict(objects, hashes[k])
            });
        }
        i = j;
    }
    out
}

/// Access to segment bytes for [`verify_run`]: a map of the sealed segment
/// being read (one at a time: chunks come in file order), and a file handle
/// and buffer for the active segment.
#[derive(Default)]
struct SegmentReader {
    map: Option<(u32, Option<memmap2::Mmap>)>,
    active: Option<(u32, Option<std::fs::File>)>,
    buffer: Vec<u8>,
}

impl SegmentReader {
    /// Bytes `start..end` of a segment, or `None` if they cannot be reached.
    fn span(
        &mut self,
        pack: &keel_store::pack::Pack,
        segment: u32,
        sealed: bool,
        start: u64,
        end: u64,
    ) -> Option<&[u8]> {
        if sealed {
            if self.map.as_ref().map(|(id, _)| *id) != Some(segment) {
                let map = std::fs::File::open(pack.segment_path(segment))
                    .ok()
                    .and_then(|file| {
                        // SAFETY: a sealed segment is never truncated or written
                        // again (only the active segment is cut, by a writer's
                        // recovery at open; compaction unlinks whole segments,
                        // which leaves a mapping valid), so the mapped bytes stay
                        // backed by the file for as long as the map lives.
                        unsafe { memmap2::Mmap::map(&file) }.ok()
                    });
                self.map = Some((segment, map));
            }
            let (_, map) = self.map.as_ref().expect("set above");
            return map.as_ref()?.get(start as usize..end as usize);
        }
        if self.active.as_ref().map(|(id, _)| *id) != Some(segment) {
            self.active = Some((
                segment,
                std::fs::File::open(pack.segment_path(segment)).ok(),
            ));
        }
        let (_, file) = self.active.as_ref().expect("set above");
        self.buffer.resize((end - start) as usize, 0);
        std::os::unix::fs::FileExt::read_exact_at(file.as_ref()?, &mut self.buffer, start).ok()?;
        Some(&self.buffer)
    }
}

/// Reads and hashes one data chunk through the pack.
fn chunk_verdict(objects: &Objects, hash: Hash) -> Result<u64, Problem> {
    let (kind, detail) = match objects.pack.get(&hash) {
        Ok(bytes) => return Ok(bytes.len() as u64),
        Err(StoreError::MissingBlob { .. }) => (FindingKind::MissingBlob, String::new()),
        Err(StoreError::CorruptBlob { actual, .. }) => (
            FindingKind::CorruptBlob,
            format!("its bytes hash to {actual}"),
        ),
        Err(other) => (FindingKind::MissingBlob, format!("cannot be read: {other}")),
    };
    Err(Problem {
        blob: hash,
        kind,
        role: ObjectRole::Chunk,
        detail,
    })
}

/// The data chunks a chunk list names, as far as its lists can be read.
fn list_chunks(objects: &Objects, list: Hash) -> Vec<Hash> {
    let mut out = Vec::new();
    let mut stack = vec![(list, u8::MAX)];
    while let Some((hash, above)) = stack.pop() {
        let Ok(bytes) = objects.pack.get(&hash) else {
            continue;
        };
        let Ok(decoded) = decode_chunk_list(&bytes) else {
            continue;
        };
        if decoded.level >= above {
            continue;
        }
        if decoded.level == 0 {
            out.extend(decoded.entries.iter().map(|(h, _)| *h));
        } else {
            stack.extend(
                decoded
                    .entries
                    .iter()
                    .rev()
                    .map(|(h, _)| (*h, decoded.level)),
            );
        }
    }
    out
}

/// How a child as its parent describes it differs from what it holds.
fn child_mismatch(
    count: u64,
    last: &Name,
    summary: &NodeSummary,
    previous_last: Option<&Name>,
) -> Option<String> {
    if summary.count != count {
        return Some(format!(
            "its parent counts {count} entries, it holds {}",
            summary.count
        ));
    }
    if summary.last.as_ref() != Some(last) {
        return Some(format!(
            "its parent says it ends at {last:?}, it ends at {:?}",
            summary.last.as_ref().map(|n| n.as_str())
        ));
    }
    match (previous_last, &summary.first) {
        (Some(previous), Some(first)) if first <= previous => Some(format!(
            "names out of order across nodes: {first:?} after {previous:?}"
        )),
        _ => None,
    }
}

/// Findings for what opening the store found outside the tree (warnings:
/// blobs they made unreadable are errors where the tree reaches them).
pub fn recovery_findings(recovery: &RecoveryReport) -> Vec<Finding> {
    let mut notes = Vec::new();
    if recovery.decayed_ranges > 0 {
        notes.push(format!(
            "{} damaged range(s) of durable pack data were padded over (copies in quarantine/)",
            recovery.decayed_ranges
        ));
    }
    if recovery.sealed_damage > 0 {
        notes.push(format!(
            "{} damaged range(s) in sealed pack segments",
            recovery.sealed_damage
        ));
    }
    if recovery.padded_gaps > 0 {
        notes.push(format!(
            "{} damaged pack range(s) padded over",
            recovery.padded_gaps
        ));
    }
    if let Some(path) = &recovery.quarantined {
        if recovery.truncated_bytes > 0 {
            notes.push(format!(
                "{} bytes cut from the pack after damage (kept in {})",
                recovery.truncated_bytes,
                path.display()
            ));
        }
    }
    if let Some(damage) = &recovery.checkpoint_history_damage {
        notes.push(format!("checkpoint history damaged: {damage}"));
    }
    if !recovery.checkpoints_missing_root.is_empty() {
        notes.push(format!(
            "checkpoints {:?} have unreadable roots",
            recovery.checkpoints_missing_root
        ));
    }
    notes
        .into_iter()
        .map(|detail| Finding {
            path: STORE_PATH.to_string(),
            kind: FindingKind::StoreFile,
            severity: Severity::Warning,
            role: ObjectRole::StoreFile,
            blob: None,
            detail,
            lost_entries: None,
        })
        .collect()
}
