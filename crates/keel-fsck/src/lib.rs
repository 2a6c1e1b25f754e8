//! # keel-fsck
//!
//! Always a route back to a working store, with no operator needed for
//! small damage and one clear command for the rest:
//!
//! - [`verify`]: walk a tree and check every object, reading and hashing
//!   every blob (bit rot is found, not only missing blobs);
//! - [`repair`]: move damaged values to `lost+found/`, unlink unreadable
//!   directories, rebuild damaged ones, and persist **all** of it as a new
//!   checkpoint, or change nothing;
//! - [`rollback`]: return to the newest checkpoint that verifies clean, as a
//!   new checkpoint with a higher revision;
//! - [`check`]: `keel fsck` itself (report, ask, repair or roll back), and
//!   [`report`]: the JSON report every run with findings leaves in `D/reports/`;
//! - [`dump`]: portable, verified archives, restore, and `D/dump/RESTORE`;
//! - [`startup`]: the check a writer runs before serving a store;
//! - [`corrupt`]: the corruption tool tests use.
//!
//! It builds on `keel-store`'s read and install primitives and never edits
//! the store's files directly (except [`corrupt`], which exists to damage
//! them). It knows nothing of replication.
//!
//! See `docs/fsck.md` for commands, findings, actions, the start-up policy,
//! and the report and archive formats.

pub mod check;
pub mod corrupt;
pub mod dump;
pub mod error;
pub mod finding;
pub mod repair;
pub mod report;
pub mod rollback;
pub mod salvage;
pub mod startup;
pub mod verify;

pub use error::FsckError;
pub use finding::{Finding, FindingKind, ObjectRole, Severity};
pub use verify::{Depth, Target, Verification, Verifier};
