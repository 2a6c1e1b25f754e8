//! The data directory: identity, the single-writer lock, staging, config.
//!
//! ```text
//! D/IDENTITY          what this directory is (format, store id, created-at), checksummed
//! D/pack/IDENTITY.backup  a second copy of IDENTITY, so a damaged one can be restored
//! D/LOCK              held (flock) by the one process that may write; holds its pid
//! D/DIRTY             present while a writer has the store open; left behind by a crash
//! D/config.toml       optional store settings
//! D/staging/          temporary files; emptied at every start, before the store opens
//! D/pack/             blob and commit segments (see `pack`)
//! D/checkpoints.log   checkpoint history (see `checkpoint`)
//! D/quarantine/       damaged bytes cut out by recovery, kept for inspection
//! ```
//!
//! A directory without a valid `IDENTITY` is never treated as a store: an
//! empty one is "not initialised" (or an unmounted volume), a non-empty one is
//! "not a Keel store". Nothing in either is created, changed or removed.
//!
//! `pack/IDENTITY.backup` is written at init and by every writable open that
//! finds it missing, damaged or different. Only `keel fsck --repair` uses it
//! ([`restore_identity`]): a damaged `IDENTITY` next to an intact backup is a
//! damaged store, not a foreign directory, and the store id is kept.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::Retention;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{create_dir_durable, empty_dir, fsync_dir, write_atomic};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "keel-store";
pub const IDENTITY_FILE: &str = "IDENTITY";
/// The second copy of `IDENTITY`, inside `pack/` (another directory entry).
pub const IDENTITY_BACKUP_FILE: &str = "IDENTITY.backup";
pub const LOCK_FILE: &str = "LOCK";
pub const DIRTY_FILE: &str = "DIRTY";
pub const CONFIG_FILE: &str = "config.toml";
pub const STAGING_DIR: &str = "staging";
pub const PACK_DIR: &str = "pack";
pub const CHECKPOINTS_FILE: &str = "checkpoints.log";
pub const QUARANTINE_DIR: &str = "quarantine";

/// What a data directory is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub format: String,
    pub format_version: u32,
    pub store_id: String,
    pub created_at: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct IdentityFile {
    #[serde(flatten)]
    identity: Identity,
    /// CRC-32C of the identity's JSON, so a damaged file is detected, not misread.
    checksum: String,
}

impl Identity {
    fn new() -> Identity {
        Identity {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            store_id: uuid::Uuid::new_v4().to_string(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

    fn checksum(&self) -> String {
        let json = serde_json::to_vec(self).expect("identity serializes");
        format!("crc32c-{:08x}", crc32c::crc32c(&json))
    }

    fn to_bytes(&self) -> Vec<u8> {
        let file = IdentityFile {
            identity: self.clone(),
            checksum: self.checksum(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("identity serializes");
        bytes.push(b'\n');
        bytes
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Identity> {
        let not_a_store = |reason: String| StoreError::NotAStore {
            path: path.parent().unwrap_or(path).to_path_buf(),
            reason,
        };
        let file: IdentityFile = serde_json::from_slice(bytes)
            .map_err(|e| not_a_store(format!("{IDENTITY_FILE} is unreadable: {e}")))?;
        if file.identity.format != FORMAT_NAME {
            return Err(not_a_store(format!(
                "{IDENTITY_FILE} names format {:?}",
                file.identity.format
            )));
        }
        if file.checksum != file.identity.checksum() {
            return Err(not_a_store(format!(
                "{IDENTITY_FILE} fails its checksum (damaged)"
            )));
        }
        if file.identity.format_version != FORMAT_VERSION {
            return Err(StoreError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: file.identity.format_version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(file.identity)
    }
}

/// Settings read from `D/config.toml`; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub checkpoints: Retention,
    /// Key prefixes whose damage must never be silently repaired (used by fsck).
    pub critical_prefixes: Vec<String>,
}

impl StoreConfig {
    /// Reads the config, or the defaults when the file does not exist.
    pub fn load(dir: &Path) -> Result<StoreConfig> {
        let path = dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| StoreError::Damaged {
                path: path.clone(),
                data_dir: dir.to_path_buf(),
                reason: format!("invalid configuration: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreConfig::default()),
            Err(e) => Err(StoreError::io("read config", path, e)),
        }
    }
}

/// An opened data directory. In write mode it holds the single-writer lock
/// until dropped.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    identity: Identity,
    lock: Option<File>,
    /// Whether a `DIRTY` marker was found: the last writer did not close cleanly.
    pub was_dirty: bool,
}

impl DataDir {
    /// Creates a new store's directory layout in `root` (which may not exist
    /// yet, or must be empty).
    pub fn init(root: &Path) -> Result<()> {
        if root.join(IDENTITY_FILE).exists() {
            let identity = read_identity(root)?;
            return Err(StoreError::AlreadyInitialised {
                path: root.to_path_buf(),
                store_id: identity.store_id,
            });
        }
        if root.exists() {
            let mut entries = std::fs::read_dir(root).context("list data directory", root)?;
            if let Some(entry) = entries.next() {
                let entry = entry.context("list data directory", root)?;
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                    reason: format!(
                        "directory is not empty (found {:?}) and has no {IDENTITY_FILE}",
                        entry.file_name()
                    ),
                });
            }
        }
        create_dir_durable(root)?;
        let staging = root.join(STAGING_DIR);
        create_dir_durable(&staging)?;
        create_dir_durable(&root.join(PACK_DIR))?;
        let identity = Identity::new().to_bytes();
        write_atomic(&staging, &identity_backup_path(root), &identity)?;
        // The identity is written last: until it exists the directory is not a store.
        write_atomic(&staging, &root.join(IDENTITY_FILE), &identity)
    }

    /// Opens an existing store's directory. With `writable`, takes the
    /// single-writer lock, empties `staging/` and marks the store dirty.
    pub fn open(root: &Path, writable: bool) -> Result<DataDir> {
        check_exists(root)?;
        let identity = read_identity(root)?;
        let was_dirty = root.join(DIRTY_FILE).exists();
        let mut dir = DataDir {
            root: root.to_path_buf(),
            identity,
            lock: None,
            was_dirty,
        };
        if writable {
            dir.lock = Some(acquire_lock(root)?);
            let staging = dir.staging();
            create_dir_durable(&staging)?;
            let (removed, bytes) = empty_dir(&staging)?;
            if removed > 0 {
                tracing::info!(files = removed, bytes, dir = %staging.display(), "removed stale staging files");
            }
            create_dir_durable(&dir.root.join(PACK_DIR))?;
            ensure_identity_backup(root, &dir.identity)?;
            let marker = format!("pid {}\n", std::process::id());
            write_atomic(&staging, &root.join(DIRTY_FILE), marker.as_bytes())?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }

    pub fn pack(&self) -> PathBuf {
        self.root.join(PACK_DIR)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_FILE)
    }

    pub fn quarantine(&self) -> PathBuf {
        self.root.join(QUARANTINE_DIR)
    }

    pub fn is_writable(&self) -> bool {
        self.lock.is_some()
    }

    /// Records a clean close: removes the `DIRTY` marker.
    pub fn mark_clean(&self) -> Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        let marker = self.root.join(DIRTY_FILE);
        match std::fs::remove_file(&marker) {
            Ok(()) => fsync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove dirty marker", marker, e)),
        }
    }
}

fn check_exists(root: &Path) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::NotAStore {
                path: root.to_path_buf(),
                reason: "not a directory".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NoDataDir {
                path: root.to_path_buf(),
            })
        }
        Err(e) => return Err(StoreError::io("open data directory", root, e)),
    }
    Ok(())
}

/// Reads and checks `D/IDENTITY`.
pub fn read_identity(root: &Path) -> Result<Identity> {
    let path = root.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Identity::parse(&path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let empty = std::fs::read_dir(root)
                .context("list data directory", root)?
                .next()
                .is_none();
            if empty {
                Err(StoreError::NotInitialised {
                    path: root.to_path_buf(),
                })
            } else {
                Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                    reason: format!("no {IDENTITY_FILE} file"),
                })
            }
        }
        Err(e) => Err(StoreError::io("read identity", path, e)),
    }
}

/// Path of the identity's second copy.
pub fn identity_backup_path(root: &Path) -> PathBuf {
    root.join(PACK_DIR).join(IDENTITY_BACKUP_FILE)
}

/// Reads and checks the second copy of the identity (`pack/IDENTITY.backup`).
pub fn read_identity_backup(root: &Path) -> Result<Identity> {
    let path = identity_backup_path(root);
    match std::fs::read(&path) {
        Ok(bytes) => Identity::parse(&path, &bytes),
        Err(e) => Err(StoreError::io("read identity backup", path, e)),
    }
}

/// Rewrites the backup when it is missing, damaged or names another identity.
fn ensure_identity_backup(root: &Path, identity: &Identity) -> Result<()> {
    if read_identity_backup(root).is_ok_and(|backup| backup == *identity) {
        return Ok(());
    }
    tracing::info!(dir = %root.display(), "writing the identity backup");
    write_atomic(
        &root.join(STAGING_DIR),
        &identity_backup_path(root),
        &identity.to_bytes(),
    )
}

/// Restores a missing or damaged `IDENTITY` from its intact backup and
/// returns the identity. Does nothing (returns it) when `IDENTITY` is valid.
/// Refuses when there is no intact backup: such a directory is never
/// treated as a store. Only `keel fsck --repair` calls this.
pub fn restore_identity(root: &Path) -> Result<Identity> {
    check_exists(root)?;
    match read_identity(root) {
        Ok(identity) => return Ok(identity),
        Err(StoreError::NotAStore { .. }) => {}
        Err(other) => return Err(other),
    }
    let backup = read_identity_backup(root).map_err(|e| StoreError::NotAStore {
        path: root.to_path_buf(),
        reason: format!("{IDENTITY_FILE} is damaged and its backup is not usable ({e})"),
    })?;
    let staging = root.join(STAGING_DIR);
    create_dir_durable(&staging)?;
    write_atomic(&staging, &root.join(IDENTITY_FILE), &backup.to_bytes())?;
    tracing::warn!(dir = %root.display(), store_id = %backup.store_id, "restored IDENTITY from its backup");
    Ok(backup)
}

fn acquire_lock(root: &Path) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .context("open lock file", &path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                String::new()
            } else {
                format!(" ({holder})")
            };
            return Err(StoreError::Locked {
                path: root.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::io("lock data directory", path, e))
        }
    }
    // Tell a second process who holds the lock.
    let pid = format!("pid {}\n", std::process::id());
    file.set_len(0).context("write lock file", &path)?;
    file.rewind().context("write lock file", &path)?;
    file.write_all(pid.as_bytes())
        .context("write lock file", &path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_open_and_refusals() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("store");
        assert!(matches!(
            DataDir::open(&root, false),
            Err(StoreError::NoDataDir { .. })
        ));
        std::fs::create_dir(&root).unwrap();
        assert!(matches!(
            DataDir::open(&root, false),
            Err(StoreError::NotInitialised { .. })
        ));
        DataDir::init(&root).unwrap();
        assert!(matches!(
            DataDir::init(&root),
            Err(StoreError::AlreadyInitialised { .. })
        ));
        let dir = DataDir::open(&root, true).unwrap();
        assert!(!dir.was_dirty);
        assert!(matches!(
            DataDir::open(&root, true),
            Err(StoreError::Locked { .. })
        ));
        drop(dir);
        let dir = DataDir::open(&root, true).unwrap();
        assert!(dir.was_dirty, "no clean close was recorded");
        dir.mark_clean().unwrap();
        drop(dir);
        assert!(!DataDir::open(&root, true).unwrap().was_dirty);
    }

    #[test]
    fn foreign_and_damaged_directories_are_refused() {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("photo.jpg"), b"...").unwrap();
        assert!(matches!(
            DataDir::init(base.path()),
            Err(StoreError::NotAStore { .. })
        ));
        assert!(matches!(
            DataDir::open(base.path(), true),
            Err(StoreError::NotAStore { .. })
        ));
        assert!(base.path().join("photo.jpg").exists());
        assert!(
            !base.path().join(LOCK_FILE).exists(),
            "nothing created in a foreign directory"
        );

        let store = tempfile::tempdir().unwrap();
        DataDir::init(store.path()).unwrap();
        let path = store.path().join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("keel-store\"", "keel-storf\"");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            DataDir::open(store.path(), false),
            Err(StoreError::NotAStore { .. })
        ));
    }

    #[test]
    fn a_damaged_identity_is_restored_from_its_backup_only_on_request() {
        let store = tempfile::tempdir().unwrap();
        DataDir::init(store.path()).unwrap();
        let original = read_identity(store.path()).unwrap();
        assert_eq!(read_identity_backup(store.path()).unwrap(), original);
        std::fs::write(store.path().join(IDENTITY_FILE), b"{garbage").unwrap();
        assert!(matches!(
            DataDir::open(store.path(), true),
            Err(StoreError::NotAStore { .. })
        ));
        assert_eq!(restore_identity(store.path()).unwrap(), original);
        assert_eq!(read_identity(store.path()).unwrap(), original);
        // A missing backup is rewritten by the next writable open.
        std::fs::remove_file(identity_backup_path(store.path())).unwrap();
        drop(DataDir::open(store.path(), true).unwrap());
        assert_eq!(read_identity_backup(store.path()).unwrap(), original);
        // Without an intact backup, nothing is restored.
        let foreign = tempfile::tempdir().unwrap();
        std::fs::write(foreign.path().join(IDENTITY_FILE), b"{").unwrap();
        assert!(restore_identity(foreign.path()).is_err());
        assert_eq!(
            std::fs::read(foreign.path().join(IDENTITY_FILE)).unwrap(),
            b"{"
        );
    }
}
