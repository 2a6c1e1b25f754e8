//! Errors of the store, by what failed and where, with what to do next.
//!
//! Two families matter to callers:
//! - *local* failures (I/O, a damaged file, a locked directory) differ from one
//!   replica to another and say nothing about the data a client sent;
//! - *deterministic* rejections (an invalid key, a path that crosses a value)
//!   are the same on every replica for the same input, so a replicated state
//!   machine can return them to the client instead of failing.
//!
//! [`StoreError::is_deterministic`] tells them apart.

use std::io;
use std::path::{Path, PathBuf};

use crate::hash::Hash;

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system call on a file of the store failed.
    /// The cause is in the message, not also a `source()`: the CLI prints
    /// an error with its chain of sources, and would say it twice.
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    /// The file system is full. Nothing was half-written: the operation that
    /// hit the limit was not acknowledged.
    #[error("disk full: {what} {path} ran out of space; free space on that file system (reads keep working)")]
    DiskFull { what: &'static str, path: PathBuf },

    /// The data directory does not exist.
    #[error(
        "data directory {path} does not exist; create a store with `keel init --data-dir {path}`"
    )]
    NoDataDir { path: PathBuf },

    /// The data directory exists but is empty: nothing was ever initialised here.
    #[error("data directory {path} is empty (not initialised); run `keel init --data-dir {path}`, or check that the volume is mounted")]
    NotInitialised { path: PathBuf },

    /// The directory holds files but no valid identity: never treat it as a store.
    #[error("{path} is not a Keel store ({reason}); refusing to touch it")]
    NotAStore { path: PathBuf, reason: String },

    /// `init` was asked to create a store where one already exists.
    #[error("{path} already holds a Keel store (id {store_id})")]
    AlreadyInitialised { path: PathBuf, store_id: String },

    /// The store was written by a format this build does not read.
    #[error("{path}: store format version {found} is not supported (this build reads version {supported})")]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// Another process holds the single-writer lock.
    #[error("data directory {path} is in use by another process{holder}; stop it first, or use an online command with --endpoint")]
    Locked { path: PathBuf, holder: String },

    /// An earlier write or fsync failed, so the files are no longer trusted.
    #[error("store is stopped after an earlier I/O failure ({cause}); reopen it to recover from the last durable commit")]
    Poisoned { cause: String },

    /// A blob referenced by the tree is not in the store.
    #[error("missing blob {hash}")]
    MissingBlob { hash: Hash },

    /// A blob's bytes no longer hash to its name (bit rot or tampering).
    #[error("corrupt blob {hash} (its bytes hash to {actual})")]
    CorruptBlob { hash: Hash, actual: Hash },

    /// A blob hashes correctly but does not decode as the object expected there.
    #[error("undecodable {what} {hash}: {reason}")]
    Undecodable {
        what: &'static str,
        hash: Hash,
        reason: String,
    },

    /// A file of the store is damaged beyond what recovery handles by itself.
    #[error("{path} is damaged: {reason}; run `keel fsck --data-dir {}`", data_dir.display())]
    Damaged {
        /// The damaged file, or the data directory when no one file is to blame.
        path: PathBuf,
        /// The data directory holding it, for the repair hint.
        data_dir: PathBuf,
        reason: String,
    },

    /// A key is not a valid path.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    /// A path component names a value where a directory is needed.
    #[error("{path:?} is a value, not a directory")]
    NotADirectory { path: String },

    /// A value was asked for at a path that is a directory.
    #[error("{path:?} is a directory, not a value")]
    IsADirectory { path: String },

    /// No checkpoint with this sequence number is retained.
    #[error("no checkpoint with sequence {sequence} (see `keel checkpoint list`)")]
    CheckpointNotFound { sequence: u64 },

    /// Something exceeds one of the store's limits.
    #[error("{what} is too large: {size} bytes (limit {limit})")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },

    /// A store opened read-only was asked to write.
    #[error("store is open read-only")]
    ReadOnly,

    /// An apply failed partway (a local failure) after editing the writer's
    /// tree in place; the store takes no more changes until it is reopened,
    /// which recovers it from its last flushed commit.
    #[error("the store refuses changes after an apply failed partway ({reason}); restart the node to recover from its last flushed state")]
    Abandoned { reason: String },

    /// Inside [`crate::resident::resident`]: the read needs the disk (never
    /// seen outside it).
    #[error("the data is not in memory")]
    NotResident,
}

impl StoreError {
    /// Wraps an I/O error with what was being done and to which file; a full
    /// disk becomes [`StoreError::DiskFull`] so callers can react to it.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            return StoreError::DiskFull { what, path };
        }
        StoreError::Io {
            what,
            path,
            cause: source,
        }
    }

    /// True for rejections that depend only on the input and the tree, and so
    /// are identical on every replica that applies the same operations.
    pub fn is_deterministic(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidKey { .. }
                | StoreError::NotADirectory { .. }
                | StoreError::IsADirectory { .. }
                | StoreError::TooLarge { .. }
        )
    }

    /// True when the error reports damaged or missing data (as opposed to a
    /// usage error or an I/O failure).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::MissingBlob { .. }
                | StoreError::CorruptBlob { .. }
                | StoreError::Undecodable { .. }
                | StoreError::Damaged { .. }
        )
    }
}

/// Extension to attach context to `io::Result`s in one call.
pub(crate) trait IoContext<T> {
    fn context(self, what: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| StoreError::io(what, path, source))
    }
}
