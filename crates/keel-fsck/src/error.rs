//! Errors of fsck, dump, restore and the start-up check: what failed, where,
//! and what to do next.

use std::path::PathBuf;

use keel_store::StoreError;

/// Everything that stops an fsck action, a dump, a restore or a start.
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The root directory cannot be read: a repair would empty the store.
    #[error("the root directory of the store is unreadable, so a repair would keep nothing; roll back instead with `keel fsck --data-dir {data_dir} --rollback`, or restore a dump with `keel restore --data-dir {data_dir} FILE`")]
    RootUnreadable { data_dir: String },

    /// Damage under a critical prefix is never moved to lost+found.
    #[error("damage under a critical prefix ({}) is not repaired into lost+found; roll back with `keel fsck --data-dir {data_dir} --rollback`, or restore a dump with `keel restore --data-dir {data_dir} FILE`", paths.join(", "))]
    CriticalDamage {
        paths: Vec<String>,
        data_dir: String,
    },

    /// More damage than a repair may handle without an operator's say-so.
    #[error("{damaged} damaged keys exceed the repair limit of {max_damage}; nothing was changed. Inspect with `keel fsck --data-dir {data_dir}`, then raise the limit with `--max-damage N`, or roll back with `--rollback`")]
    TooMuchDamage {
        damaged: u64,
        max_damage: u64,
        data_dir: String,
    },

    /// No retained checkpoint can be used for a rollback.
    #[error("no retained checkpoint of {data_dir} has a readable root directory; restore a dump with `keel restore --data-dir {data_dir} FILE`")]
    NoUsableCheckpoint { data_dir: String },

    /// A damaged value could not be given a name in lost+found.
    #[error("cannot place damaged key {key} in lost+found: {reason}; nothing was changed")]
    NoLostFoundName { key: String, reason: String },

    /// A dump archive is damaged, truncated, tampered with or not a dump.
    #[error("{path} is not a usable Keel dump: {reason}; nothing was changed")]
    BadArchive { path: PathBuf, reason: String },

    /// A file outside the store (an archive, a report) failed.
    /// (As in `StoreError::Io`, the cause is in the message only.)
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    /// A value could not be read while dumping.
    #[error("cannot read {key} for the dump: {cause}; dump what is readable with `--ignore-failed-read`, or repair first with `keel fsck --repair`")]
    UnreadableValue { key: String, cause: StoreError },

    /// The start-up check found damage it may not repair by itself.
    #[error("{message}")]
    StartRefused { message: String },

    /// A usage error detected after argument parsing (bad target, bad choice).
    #[error("{message}")]
    Usage { message: String },
}

impl FsckError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> FsckError {
        FsckError::Io {
            what,
            path: path.into(),
            cause: source,
        }
    }

    /// True when the command could not start at all (exit code 2).
    pub fn is_cannot_start(&self) -> bool {
        match self {
            FsckError::Store(error) => matches!(
                error,
                StoreError::NoDataDir { .. }
                    | StoreError::NotInitialised { .. }
                    | StoreError::NotAStore { .. }
                    | StoreError::AlreadyInitialised { .. }
                    | StoreError::UnsupportedFormat { .. }
                    | StoreError::Locked { .. }
                    | StoreError::CheckpointNotFound { .. }
            ),
            FsckError::StartRefused { .. } | FsckError::Usage { .. } => true,
            _ => false,
        }
    }
}
