//! Transactions: what a client asks the store to change, atomically.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// An atomic group of operations guarded by optional comparisons. Either
/// every comparison holds and every operation applies, or nothing changes.
/// A transaction that changes something gets the next revision.
// These types travel in the replicated log in a compact binary encoding
// that is not self-describing: no internally tagged enums, no skipped fields.

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    #[serde(default)]
    pub compare: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Txn {
        Txn {
            compare: Vec::new(),
            ops: vec![Op::Put {
                key: key.into(),
                value: value.into(),
            }],
        }
    }

    pub fn delete(key: impl Into<String>) -> Txn {
        Txn {
            compare: Vec::new(),
            ops: vec![Op::Delete { key: key.into() }],
        }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> Txn {
        Txn {
            compare: Vec::new(),
            ops: vec![Op::DeletePrefix {
                prefix: prefix.into(),
            }],
        }
    }

    /// Adds the condition "key's revision is `revision`" (0: key is absent).
    pub fn when(mut self, key: impl Into<String>, revision: u64) -> Txn {
        self.compare.push(Compare {
            key: key.into(),
            mod_revision: revision,
        });
        self
    }
}

/// "The key was last changed at `mod_revision`" (0 means "does not exist").
/// For a directory, its revision is that of the last change anywhere below
/// it, so one comparison guards a whole subtree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub mod_revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Sets a key's value, creating parent directories.
    Put { key: String, value: Bytes },
    /// Points a key at a value whose chunks are already in the store (see
    /// `Store::upload`); used for values streamed from a file.
    PutStored { key: String, value: StoredValue },
    /// Removes a key (not a directory).
    Delete { key: String },
    /// Removes the key `prefix` and everything below `prefix/`; an empty
    /// prefix removes everything.
    DeletePrefix { prefix: String },
}

/// A chunked value already written to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredValue {
    Blob { hash: Hash, size: u64 },
    Chunked { list: Hash, size: u64 },
}

/// What happened to one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOutcome {
    /// Applied. `revision` is the new revision, or the current one when
    /// nothing changed (`changed` false).
    Applied {
        revision: u64,
        changed: bool,
        deleted: u64,
    },
    /// A comparison did not hold; nothing changed.
    CompareFailed {
        key: String,
        expected: u64,
        actual: u64,
    },
    /// The transaction is invalid for this tree (same answer on every replica).
    Rejected { reason: String },
}

impl TxnOutcome {
    pub fn is_applied(&self) -> bool {
        matches!(self, TxnOutcome::Applied { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's binary encoding must round-trip every operation.
    #[test]
    fn transactions_round_trip_in_a_non_self_describing_format() {
        let txn = Txn {
            compare: vec![],
            ops: vec![
                Op::Put {
                    key: "a".into(),
                    value: Bytes::from_static(b"1"),
                },
                Op::PutStored {
                    key: "b".into(),
                    value: StoredValue::Blob {
                        hash: Hash::of(b"x"),
                        size: 1,
                    },
                },
                Op::Delete { key: "c".into() },
                Op::DeletePrefix { prefix: "d".into() },
            ],
        };
        let bytes = postcard::to_stdvec(&txn).unwrap();
        assert_eq!(postcard::from_bytes::<Txn>(&bytes).unwrap(), txn);
        let outcome = TxnOutcome::CompareFailed {
            key: "k".into(),
            expected: 1,
            actual: 2,
        };
        let bytes = postcard::to_stdvec(&outcome).unwrap();
        assert_eq!(postcard::from_bytes::<TxnOutcome>(&bytes).unwrap(), outcome);
    }
}
