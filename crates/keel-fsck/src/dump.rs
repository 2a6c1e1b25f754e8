//! Dumps and restores: a portable, verified archive of a store's keys.
//!
//! ## Archive format (a POSIX/GNU tar file)
//! ```text
//! values/<key>      one regular file per key, the value's bytes (in key order)
//! manifest.json     format "keel-dump", format_version 1, store_id, source
//!                   {revision, checkpoint, root}, created_at, keys [{key,
//!                   size, blake3, revision}], skipped [{path, reason}]
//! manifest.blake3   "blake3-<hex>" of manifest.json's bytes; always last
//! ```
//! The manifest comes after the values so that values stream straight from
//! the store into the archive (a value of any size is never held in memory).
//! A restore reads the archive twice: first it checks everything (the final
//! entry, the manifest's hash, every value's size and BLAKE3, keys valid and
//! not nested under one another) and changes nothing if any check fails;
//! then it streams the values into the store and installs the tree as a new
//! checkpoint whose revision is above every revision the store ever used.
//! Restored entries take that revision.
//!
//! `--ignore-failed-read` dumps what is readable from a damaged store: each
//! value is verified before it is written, and unreadable values and
//! directories are listed in the manifest's `skipped`.
//!
//! `D/dump/RESTORE` (a symlink to a dump, or a file holding its path,
//! relative to `D/dump/`) makes the next writer start restore from it; the
//! marker is then renamed `RESTORE.done-<time>` so it happens once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_store::key::split_key;
use keel_store::object::{EntryValue, Link};
use keel_store::tree::{self, Objects};
use keel_store::{Hash, Store, StoredValueOrInline};
use serde::{Deserialize, Serialize};

use crate::error::FsckError;
use crate::finding::{child_path, ROOT_PATH};
use crate::salvage::readable_entries;

pub const DUMP_FORMAT: &str = "keel-dump";
pub const DUMP_FORMAT_VERSION: u32 = 1;
pub const MANIFEST_ENTRY: &str = "manifest.json";
pub const INTEGRITY_ENTRY: &str = "manifest.blake3";
pub const VALUES_PREFIX: &str = "values/";
/// Largest manifest a restore reads into memory.
pub const MANIFEST_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Where the restore-at-start marker lives, inside the data directory.
pub const RESTORE_MARKER: &str = "dump/RESTORE";

/// The tree a dump was taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub revision: u64,
    pub checkpoint: Option<u64>,
    pub root: Hash,
}

/// One key in a dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key: String,
    pub size: u64,
    /// BLAKE3 of the whole value.
    pub blake3: Hash,
    pub revision: u64,
}

/// Something a dump with `--ignore-failed-read` left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub store_id: String,
    pub source: Source,
    pub created_at: String,
    pub keys: Vec<KeyRecord>,
    pub skipped: Vec<Skipped>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.keys.iter().map(|k| k.size).sum()
    }
}

// ---------------------------------------------------------------- dump

/// What to put in a dump.
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// Skip what cannot be read (listed in the manifest) instead of failing.
    pub ignore_failed_read: bool,
    /// Only keys at or below these prefixes (empty: every key). Like flux's
    /// fallback dump of the few keys that matter most when no good dump exists.
    pub prefixes: Vec<String>,
}

/// Whether `key` is a value lying above every prefix (a prefix reaching
/// below a value names nothing in it).
fn is_above(key: &str, prefixes: &[String]) -> bool {
    prefixes.iter().all(|prefix| {
        let prefix = prefix.trim_matches('/');
        prefix != key && prefix.starts_with(&format!("{key}/"))
    })
}

/// Writes a dump of the tree `source` of `store` to `file` (atomically:
/// a `.partial` file renamed into place once complete and durable).
pub fn dump(
    store: &Store,
    source: Source,
    file: &Path,
    options: &DumpOptions,
) -> Result<Manifest, FsckError> {
    let ignore_failed_read = options.ignore_failed_read;
    let objects = store.objects();
    let mut values = Vec::new();
    let mut skipped = Vec::new();
    collect(
        objects,
        &Link::Stored(source.root),
        ROOT_PATH,
        0,
        &mut values,
        &mut skipped,
    );
    if !options.prefixes.is_empty() {
        let wanted = |path: &str| {
            options
                .prefixes
                .iter()
                .any(|prefix| crate::finding::touches_prefix(path, prefix))
        };
        values.retain(|(key, _, _)| wanted(key) && !is_above(key, &options.prefixes));
        skipped.retain(|s| wanted(&s.path));
    }
    if let (false, Some(first)) = (ignore_failed_read, skipped.first()) {
        return Err(FsckError::UnreadableValue {
            key: first.path.clone(),
            cause: keel_store::StoreError::Damaged {
                path: store.dir().to_path_buf(),
                data_dir: store.dir().to_path_buf(),
                reason: first.reason.clone(),
            },
        });
    }
    let partial = partial_path(file);
    let result = write_archive(store, source, &partial, values, skipped, ignore_failed_read);
    match result {
        Ok(manifest) => {
            std::fs::rename(&partial, file)
                .map_err(|e| FsckError::io("rename dump into place", file, e))?;
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = File::open(parent).and_then(|d| d.sync_all());
            }
            Ok(manifest)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error)
        }
    }
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    file.with_file_name(name)
}

/// Every readable value (key, entry revision, value) in key order, and what could not be read.
fn collect(
    objects: &Objects,
    dir: &Link,
    path: &str,
    depth: usize,
    out: &mut Vec<(String, u64, EntryValue)>,
    skipped: &mut Vec<Skipped>,
) {
    let Some(entries) = readable_entries(objects, dir) else {
        skipped.push(Skipped {
            path: path.to_string(),
            reason: "directory unreadable".into(),
        });
        return;
    };
    let claimed = objects.resolve(dir).map(|c| c.node.count()).unwrap_or(0);
    if claimed > entries.len() as u64 {
        let lost = claimed - entries.len() as u64;
        skipped.push(Skipped {
            path: path.to_string(),
            reason: format!("{lost} entries unreadable"),
        });
    }
    for entry in entries {
        let key = child_path(path, &entry.name);
        match entry.value {
            EntryValue::Dir { root, .. } if depth < keel_store::key::KEY_SEGMENTS_MAX => {
                collect(objects, &root, &key, depth + 1, out, skipped)
            }
            EntryValue::Dir { .. } => skipped.push(Skipped {
                path: key,
                reason: "nested too deep".into(),
            }),
            value => out.push((key, entry.revision, value)),
        }
    }
}

fn write_archive(
    store: &Store,
    source: Source,
    partial: &Path,
    values: Vec<(String, u64, EntryValue)>,
    mut skipped: Vec<Skipped>,
    ignore_failed_read: bool,
) -> Result<Manifest, FsckError> {
    let file = File::create(partial).map_err(|e| FsckError::io("create dump", partial, e))?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let io = |e: std::io::Error| FsckError::io("write dump", partial, e);
    let mut keys = Vec::with_capacity(values.len());
    for (key, revision, value) in values {
        if ignore_failed_read {
            if let Err(error) = check_value(store.objects(), &value) {
                skipped.push(Skipped {
                    path: key,
                    reason: error.to_string(),
                });
                continue;
            }
        }
        let size = value.size().unwrap_or(0);
        let mut reader = ValueReader::new(store.objects(), &value).map_err(|source| {
            FsckError::UnreadableValue {
                key: key.clone(),
                cause: source,
            }
        })?;
        builder
            .append_data(
                &mut header(size),
                format!("{VALUES_PREFIX}{key}"),
                &mut reader,
            )
            .map_err(|e| match reader.failure.take() {
                Some(source) => FsckError::UnreadableValue {
                    key: key.clone(),
                    cause: source,
                },
                None => io(e),
            })?;
        if reader.count != size {
            return Err(FsckError::UnreadableValue {
                key,
                cause: keel_store::StoreError::Damaged {
                    path: store.dir().to_path_buf(),
                    data_dir: store.dir().to_path_buf(),
                    reason: format!(
                        "value claims {size} bytes, its chunks hold {}",
                        reader.count
                    ),
                },
            });
        }
        keys.push(KeyRecord {
            key,
            size,
            blake3: Hash(*reader.hasher.finalize().as_bytes()),
            revision,
        });
    }
    let manifest = Manifest {
        format: DUMP_FORMAT.into(),
        format_version: DUMP_FORMAT_VERSION,
        store_id: store.identity().store_id.clone(),
        source,
        created_at: crate::report::now_rfc3339(),
        keys,
        skipped,
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let integrity = format!("{}\n", Hash::of(&body));
    builder
        .append_data(
            &mut header(body.len() as u64),
            MANIFEST_ENTRY,
            body.as_slice(),
        )
        .map_err(io)?;
    builder
        .append_data(
            &mut header(integrity.len() as u64),
            INTEGRITY_ENTRY,
            integrity.as_bytes(),
        )
        .map_err(io)?;
    let writer = builder.into_inner().map_err(io)?;
    let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(manifest)
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

/// Reads and verifies every chunk of a value (for `--ignore-failed-read`).
fn check_value(objects: &Objects, value: &EntryValue) -> keel_store::Result<()> {
    let mut total = 0;
    for (hash, _) in tree::value_chunks(objects, value)? {
        total += objects.pack.get(&hash)?.len() as u64;
    }
    let size = value.size().unwrap_or(0);
    if !matches!(value, EntryValue::Inline(_)) && total != size {
        return Err(keel_store::StoreError::Undecodable {
            what: "value",
            hash: Hash::of(&[]),
            reason: format!("claims {size} bytes, its chunks hold {total}"),
        });
    }
    Ok(())
}

/// Streams a value's verified chunks, hashing what it yields.
struct ValueReader<'a> {
    objects: &'a Objects,
    chunks: std::vec::IntoIter<(Hash, u64)>,
    current: Bytes,
    at: usize,
    hasher: blake3::Hasher,
    count: u64,
    failure: Option<keel_store::StoreError>,
}

impl<'a> ValueReader<'a> {
    fn new(objects: &'a Objects, value: &EntryValue) -> keel_store::Result<ValueReader<'a>> {
        let (current, chunks) = match value {
            EntryValue::Inline(bytes) => (bytes.clone(), Vec::new()),
            other => (Bytes::new(), tree::value_chunks(objects, other)?),
        };
        Ok(ValueReader {
            objects,
            chunks: chunks.into_iter(),
            current,
            at: 0,
            hasher: blake3::Hasher::new(),
            count: 0,
            failure: None,
        })
    }
}

impl Read for ValueReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            let Some((hash, _)) = self.chunks.next() else {
                return Ok(0);
            };
            match self.objects.pack.get(&hash) {
                Ok(bytes) => {
                    self.current = bytes;
                    self.at = 0;
                }
                Err(error) => {
                    let io = std::io::Error::other(error.to_string());
                    self.failure = Some(error);
                    return Err(io);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.hasher.update(&buf[..n]);
        self.at += n;
        self.count += n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------- restore

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> FsckError {
    FsckError::BadArchive {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn open_archive(path: &Path) -> Result<tar::Archive<BufReader<File>>, FsckError> {
    let file = File::open(path).map_err(|e| FsckError::io("open dump", path, e))?;
    Ok(tar::Archive::new(BufReader::with_capacity(1 << 20, file)))
}

fn entry_name(path: &Path, entry: &tar::Entry<'_, BufReader<File>>) -> Result<String, FsckError> {
    let raw = entry.path_bytes();
    String::from_utf8(raw.into_owned()).map_err(|_| bad(path, "an entry name is not UTF-8"))
}

/// Checks a whole archive without changing anything; returns its manifest.
pub fn verify_archive(path: &Path) -> Result<Manifest, FsckError> {
    let mut archive = open_archive(path)?;
    let mut seen: BTreeMap<String, (u64, Hash)> = BTreeMap::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut integrity: Option<String> = None;
    let entries = archive
        .entries()
        .map_err(|e| bad(path, format!("unreadable tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(path, format!("unreadable tar entry: {e}")))?;
        let name = entry_name(path, &entry)?;
        if integrity.is_some() {
            return Err(bad(path, format!("entry {name:?} after {INTEGRITY_ENTRY}")));
        }
        if let Some(key) = name.strip_prefix(VALUES_PREFIX) {
            let mut reader = Hashing {
                inner: &mut entry,
                hasher: blake3::Hasher::new(),
                count: 0,
            };
            std::io::copy(&mut reader, &mut std::io::sink())
                .map_err(|e| bad(path, format!("{name}: {e}")))?;
            let found = (reader.count, Hash(*reader.hasher.finalize().as_bytes()));
            if seen.insert(key.to_string(), found).is_some() {
                return Err(bad(path, format!("key {key} appears twice")));
            }
        } else if name == MANIFEST_ENTRY {
            manifest_bytes = Some(read_small(path, &mut entry, MANIFEST_BYTES_MAX)?);
        } else if name == INTEGRITY_ENTRY {
            let text = read_small(path, &mut entry, 1024)?;
            integrity = Some(String::from_utf8_lossy(&text).trim().to_string());
        } else {
            return Err(bad(path, format!("unexpected entry {name:?}")));
        }
    }
    let integrity =
        integrity.ok_or_else(|| bad(path, format!("no {INTEGRITY_ENTRY} entry (truncated?)")))?;
    let manifest_bytes =
        manifest_bytes.ok_or_else(|| bad(path, format!("no {MANIFEST_ENTRY} entry")))?;
    if integrity != Hash::of(&manifest_bytes).to_string() {
        return Err(bad(
            path,
            "the manifest does not match its integrity hash (damaged or tampered)",
        ));
    }
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| bad(path, format!("manifest: {e}")))?;
    check_manifest(path, &manifest, &seen)?;
    Ok(manifest)
}

fn read_small(path: &Path, entry: &mut dyn Read, limit: u64) -> Result<Vec<u8>, FsckError> {
    let mut out = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(path, format!("unreadable entry: {e}")))?;
    if out.len() as u64 > limit {
        return Err(bad(path, format!("an entry exceeds {limit} bytes")));
    }
    Ok(out)
}

/// The manifest must describe exactly the values found, with valid keys.
fn check_manifest(
    path: &Path,
    manifest: &Manifest,
    seen: &BTreeMap<String, (u64, Hash)>,
) -> Result<(), FsckError> {
    if manifest.format != DUMP_FORMAT || manifest.format_version != DUMP_FORMAT_VERSION {
        return Err(bad(
            path,
            format!(
            "format {:?} version {} (this build reads {DUMP_FORMAT} version {DUMP_FORMAT_VERSION})",
            manifest.format, manifest.format_version
        ),
        ));
    }
    if manifest.keys.len() != seen.len() {
        return Err(bad(
            path,
            format!(
                "the manifest lists {} keys, the archive holds {}",
                manifest.keys.len(),
                seen.len()
            ),
        ));
    }
    let mut keys = BTreeSet::new();
    for record in &manifest.keys {
        split_key(&record.key).map_err(|e| bad(path, e.to_string()))?;
        match seen.get(&record.key) {
            Some(&(size, hash)) if size == record.size && hash == record.blake3 => {}
            Some(_) => {
                return Err(bad(
                    path,
                    format!("{}: size or BLAKE3 does not match the manifest", record.key),
                ))
            }
            None => {
                return Err(bad(
                    path,
                    format!(
                        "{}: listed in the manifest, missing from the archive",
                        record.key
                    ),
                ))
            }
        }
        keys.insert(record.key.as_str());
    }
    for key in &keys {
        let names: Vec<&str> = key.split('/').collect();
        for i in 1..names.len() {
            let parent = names[..i].join("/");
            if keys.contains(parent.as_str()) {
                return Err(bad(
                    path,
                    format!("{key} lies below {parent}, which is a value"),
                ));
            }
        }
    }
    Ok(())
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreOutcome {
    pub keys: usize,
    pub bytes: u64,
    pub checkpoint: keel_store::Checkpoint,
    pub source_store_id: String,
    pub source: Source,
    pub skipped_in_dump: usize,
}

/// Verifies `file` and then loads it into `store`, replacing its contents,
/// as a new checkpoint above every revision ever used.
pub fn restore(store: &Store, file: &Path) -> Result<RestoreOutcome, FsckError> {
    let manifest = verify_archive(file)?;
    restore_verified(store, file, &manifest)
}

/// The second pass of a restore, for a manifest [`verify_archive`] returned.
pub fn restore_verified(
    store: &Store,
    file: &Path,
    manifest: &Manifest,
) -> Result<RestoreOutcome, FsckError> {
    let _hold = store.hold_gc();
    let revision = store.next_install_revision();
    let expected: BTreeMap<&str, &KeyRecord> =
        manifest.keys.iter().map(|k| (k.key.as_str(), k)).collect();
    let mut root = Link::empty_dir();
    let mut archive = open_archive(file)?;
    let entries = archive
        .entries()
        .map_err(|e| bad(file, format!("unreadable tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(file, format!("unreadable tar entry: {e}")))?;
        let name = entry_name(file, &entry)?;
        let Some(key) = name.strip_prefix(VALUES_PREFIX) else {
            continue;
        };
        let record = expected
            .get(key)
            .ok_or_else(|| bad(file, format!("{key} changed since it was verified")))?;
        let mut reader = Hashing {
            inner: &mut entry,
            hasher: blake3::Hasher::new(),
            count: 0,
        };
        let (value, _hold) = store.upload(&mut reader)?;
        if reader.count != record.size
            || Hash(*reader.hasher.finalize().as_bytes()) != record.blake3
        {
            return Err(bad(file, format!("{key} changed since it was verified")));
        }
        let value = match value {
            StoredValueOrInline::Inline(bytes) => EntryValue::Inline(bytes),
            StoredValueOrInline::Stored(keel_store::StoredValue::Blob { hash, size }) => {
                EntryValue::Blob { hash, size }
            }
            StoredValueOrInline::Stored(keel_store::StoredValue::Chunked { list, size }) => {
                EntryValue::Chunked { list, size }
            }
        };
        let names = split_key(key)?;
        tree::put_path(store.objects(), &mut root, &names, value, revision)?;
    }
    let checkpoint = store.install_root(root, None)?;
    Ok(RestoreOutcome {
        keys: manifest.keys.len(),
        bytes: manifest.total_bytes(),
        checkpoint,
        source_store_id: manifest.store_id.clone(),
        source: manifest.source.clone(),
        skipped_in_dump: manifest.skipped.len(),
    })
}

// ---------------------------------------------------------------- RESTORE marker

/// The dump `D/dump/RESTORE` points at, if the marker exists.
pub fn pending_restore(dir: &Path) -> Result<Option<PathBuf>, FsckError> {
    let marker = dir.join(RESTORE_MARKER);
    let meta = match std::fs::symlink_metadata(&marker) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FsckError::io("inspect restore marker", &marker, e)),
    };
    let target = if meta.file_type().is_symlink() {
        std::fs::read_link(&marker).map_err(|e| FsckError::io("read restore marker", &marker, e))?
    } else {
        let text = std::fs::read_to_string(&marker)
            .map_err(|e| FsckError::io("read restore marker", &marker, e))?;
        PathBuf::from(text.trim())
    };
    let base = marker.parent().unwrap_or(dir);
    Ok(Some(if target.is_absolute() {
        target
    } else {
        base.join(target)
    }))
}

/// Renames the marker so the restore happens once.
pub fn mark_restore_done(dir: &Path) -> Result<PathBuf, FsckError> {
    let marker = dir.join(RESTORE_MARKER);
    let stamp = crate::report::now_rfc3339().replace(':', "-");
    let done = marker.with_file_name(format!("RESTORE.done-{stamp}"));
    std::fs::rename(&marker, &done)
        .map_err(|e| FsckError::io("rename restore marker", &marker, e))?;
    if let Some(parent) = marker.parent() {
        let _ = File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(done)
}

/// Creates `D/dump/RESTORE` pointing at `dump_file` (a symlink), so the next
/// writer start restores from it.
pub fn request_restore(dir: &Path, dump_file: &Path) -> Result<PathBuf, FsckError> {
    let dump_dir = dir.join("dump");
    std::fs::create_dir_all(&dump_dir)
        .map_err(|e| FsckError::io("create dump directory", &dump_dir, e))?;
    let target = std::fs::canonicalize(dump_file)
        .map_err(|e| FsckError::io("resolve dump", dump_file, e))?;
    let marker = dir.join(RESTORE_MARKER);
    let temp = dump_dir.join(format!(".RESTORE.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(&target, &temp)
        .and_then(|()| std::fs::rename(&temp, &marker))
        .and_then(|()| File::open(&dump_dir)?.sync_all())
        .map_err(|e| FsckError::io("create restore marker", &marker, e))?;
    Ok(marker)
}
