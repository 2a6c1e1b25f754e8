//! # keel-store
//!
//! One node's state: a content-addressed, checkpointed, crash-safe key-value
//! store. Keys are `/`-separated paths; the state is a Merkle tree whose root
//! hash names the whole content, so two replicas with equal roots hold equal
//! data.
//!
//! Layers, bottom up (each knows nothing of the ones above it):
//! - [`frame`]: checksummed records, and the scan that finds where valid data ends;
//! - [`segment`]: numbered append-only files with latched I/O errors (a full
//!   disk is cut back cleanly instead, see [`space`] for its test seam);
//!   [`resident`] makes its reads fail rather than wait for the disk;
//! - [`pack`]: blobs by BLAKE3 hash, commit records, hints, compaction;
//! - [`object`] and [`tree`]: directory HAMTs, chunked values, persistent updates;
//! - [`checkpoint`]: the durable history of named roots, with retention;
//! - [`datadir`]: identity, single-writer lock, staging, configuration;
//! - [`store`]: transactions, apply/flush/commit, snapshots, recovery, GC.
//!
//! What it deliberately does not do: replication (the node crate feeds it
//! Raft-ordered transactions), and repair of damaged trees (the fsck crate
//! builds on the read and reset primitives here).
//!
//! See `docs/ARCHITECTURE.md` for the on-disk formats and the crash analysis.

pub mod checkpoint;
pub mod datadir;
pub mod error;
pub mod frame;
pub mod fsutil;
pub mod hash;
pub mod key;
pub mod object;
pub mod pack;
pub mod resident;
pub mod segment;
pub mod space;
pub mod store;
pub mod tree;
pub mod txn;

pub use checkpoint::{Checkpoint, Retention};
pub use error::{Result, StoreError};
pub use hash::Hash;
pub use object::{Entry, EntryValue};
pub use space::SpaceLimit;
pub use store::{
    ChangeEvent, ChangeKind, Durability, GcHold, GcReport, ItemKind, ListItem, PendingCheckpoint,
    RecoveryReport, Snapshot, Store, StoreOptions, StoreStats, StoredValueOrInline,
};
pub use txn::{Compare, Op, StoredValue, Txn, TxnOutcome};
