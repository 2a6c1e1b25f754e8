//! Property test: random operation sequences against an in-memory model,
//! including reads at old checkpoints, garbage collection and reopening.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{noise, small_options};
use keel_store::{Compare, Op, Retention, Store, StoreError, Txn, TxnOutcome};
use proptest::prelude::*;

const KEEP_NEWEST: usize = 3;

fn retention() -> Retention {
    Retention {
        keep_newest: KEEP_NEWEST,
        keep_hourly_hours: 0,
    }
}

/// Keys that exercise large directories (HAMT splits), nesting, and
/// conflicts between values and directories.
fn key_universe() -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(format!("r{i}"));
    }
    for d in 0..2 {
        for n in 0..60 {
            keys.push(format!("d{d}/n{n}"));
        }
    }
    for x in 0..4 {
        keys.push(format!("d0/s/x{x}"));
    }
    keys.extend(["d0/s/y/z", "d0/n1/deeper", "r0/child", "d1"].map(String::from));
    keys
}

const PREFIXES: &[&str] = &["d0", "d1", "d0/s", "r0", "d0/n1", ""];

#[derive(Clone, Debug)]
enum Action {
    Put {
        key: usize,
        size: usize,
        seed: u8,
    },
    Delete {
        key: usize,
    },
    DeletePrefix {
        prefix: usize,
    },
    CompareAndPut {
        key: usize,
        correct: bool,
        seed: u8,
    },
    /// Several puts in one transaction.
    Batch {
        keys: Vec<usize>,
        seed: u8,
    },
    Checkpoint,
    ReadCheckpoint {
        which: usize,
    },
    Gc,
    Reopen {
        clean: bool,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let n = key_universe().len();
    let size = prop_oneof![8 => 0usize..64, 3 => Just(2000usize), 1 => Just(150_000usize)];
    prop_oneof![
        10 => (0..n, size, any::<u8>()).prop_map(|(key, size, seed)| Action::Put { key, size, seed }),
        4 => (0..n).prop_map(|key| Action::Delete { key }),
        1 => (0..PREFIXES.len()).prop_map(|prefix| Action::DeletePrefix { prefix }),
        2 => (0..n, any::<bool>(), any::<u8>()).prop_map(|(key, correct, seed)| Action::CompareAndPut { key, correct, seed }),
        2 => (prop::collection::vec(0..n, 1..40), any::<u8>()).prop_map(|(keys, seed)| Action::Batch { keys, seed }),
        2 => Just(Action::Checkpoint),
        2 => any::<usize>().prop_map(|which| Action::ReadCheckpoint { which }),
        1 => Just(Action::Gc),
        1 => any::<bool>().prop_map(|clean| Action::Reopen { clean }),
    ]
}

type Keys = BTreeMap<String, (Vec<u8>, u64)>;

#[derive(Default)]
struct Model {
    keys: Keys,
    /// Revision of the last change below each existing directory.
    dir_revisions: BTreeMap<String, u64>,
    revision: u64,
    /// Retained checkpoints: (sequence, revision, keys).
    checkpoints: Vec<(u64, u64, Keys)>,
}

fn proper_prefixes(key: &str) -> Vec<String> {
    let names: Vec<&str> = key.split('/').collect();
    (1..names.len()).map(|i| names[..i].join("/")).collect()
}

impl Model {
    fn value_above(&self, key: &str) -> bool {
        proper_prefixes(key)
            .iter()
            .any(|p| self.keys.contains_key(p))
    }

    fn is_dir(&self, key: &str) -> bool {
        let prefix = format!("{key}/");
        self.keys
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Stamps the directories above `key` with the current revision, and
    /// forgets directories that no longer exist.
    fn touch(&mut self, key: &str) {
        for dir in proper_prefixes(key) {
            if self.is_dir(&dir) {
                self.dir_revisions.insert(dir, self.revision);
            } else {
                self.dir_revisions.remove(&dir);
            }
        }
    }

    /// The revision a comparison sees: a value's, a directory's, or 0.
    fn revision_of(&self, key: &str) -> u64 {
        self.keys
            .get(key)
            .map(|(_, r)| *r)
            .or_else(|| self.dir_revisions.get(key).copied())
            .unwrap_or(0)
    }

    /// Applies one transaction of puts, all-or-nothing; returns whether it applied.
    fn puts(&mut self, puts: &[(String, Vec<u8>)]) -> bool {
        let mut next = Model {
            keys: self.keys.clone(),
            ..Model::default()
        };
        for (key, _) in puts {
            if next.value_above(key) || next.is_dir(key) {
                return false;
            }
            next.keys.insert(key.clone(), (Vec::new(), 0));
        }
        self.revision += 1;
        for (key, value) in puts {
            self.keys
                .insert(key.clone(), (value.clone(), self.revision));
            self.touch(key);
        }
        true
    }

    fn delete(&mut self, key: &str) -> Option<bool> {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
            self.touch(key);
            return Some(true);
        }
        if self.value_above(key) || self.is_dir(key) {
            return None;
        }
        Some(false)
    }

    fn delete_prefix(&mut self, prefix: &str) -> Option<bool> {
        if !prefix.is_empty() && self.value_above(prefix) {
            return None;
        }
        let below = format!("{prefix}/");
        let before = self.keys.len();
        self.keys
            .retain(|k, _| !(prefix.is_empty() || k == prefix || k.starts_with(&below)));
        let changed = self.keys.len() != before;
        if changed {
            self.revision += 1;
            self.dir_revisions
                .retain(|d, _| !(prefix.is_empty() || d == prefix || d.starts_with(&below)));
            self.touch(prefix);
        }
        Some(changed)
    }
}

fn check_state(view: &keel_store::Snapshot, expected: &Keys) {
    let listed: Vec<String> = view
        .list("", true)
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    let wanted: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(listed, wanted, "key sets differ");
    for (key, (value, revision)) in expected {
        let entry = view
            .get(key)
            .unwrap()
            .unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(entry.revision, *revision, "revision of {key}");
        assert_eq!(
            view.read(&entry.value).unwrap(),
            Bytes::from(value.clone()),
            "value of {key}"
        );
    }
}

fn applied(outcome: &TxnOutcome) -> bool {
    matches!(outcome, TxnOutcome::Applied { changed: true, .. })
}

/// Durably (`commit`, undoable), or applied in memory only (`apply`, the
/// replicated path, which edits unpublished nodes in place).
fn write(store: &Store, txn: Txn, lazy: bool) -> TxnOutcome {
    let outcomes = if lazy {
        store.apply(&[txn])
    } else {
        store.commit(&[txn])
    };
    outcomes.unwrap().remove(0)
}

/// `lazy`: writes are applied, not committed, and the state is read (which
/// publishes it) only every `read_every` actions, so that several writes
/// edit the same unpublished tree; the view read last time must still show
/// the state of that time.
fn run(actions: Vec<Action>, lazy: bool, read_every: usize) {
    let keys = key_universe();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::init(dir.path(), small_options(retention())).unwrap();
    let mut model = Model::default();
    // `init` checkpoints the empty tree.
    model
        .checkpoints
        .push((store.checkpoints()[0].sequence, 0, Keys::new()));
    let mut held: Option<(keel_store::Snapshot, Keys)> = None;
    for (step, action) in actions.into_iter().enumerate() {
        match action {
            Action::Put { key, size, seed } => {
                let value = noise(u64::from(seed), size);
                let outcome = write(&store, Txn::put(keys[key].clone(), value.clone()), lazy);
                assert_eq!(
                    applied(&outcome),
                    model.puts(&[(keys[key].clone(), value)]),
                    "{outcome:?}"
                );
            }
            Action::Delete { key } => {
                let outcome = write(&store, Txn::delete(keys[key].clone()), lazy);
                match model.delete(&keys[key]) {
                    None => assert!(
                        matches!(outcome, TxnOutcome::Rejected { .. }),
                        "{outcome:?}"
                    ),
                    Some(changed) => assert_eq!(applied(&outcome), changed, "{outcome:?}"),
                }
            }
            Action::DeletePrefix { prefix } => {
                let outcome = write(&store, Txn::delete_prefix(PREFIXES[prefix]), lazy);
                match model.delete_prefix(PREFIXES[prefix]) {
                    None => assert!(
                        matches!(outcome, TxnOutcome::Rejected { .. }),
                        "{outcome:?}"
                    ),
                    Some(changed) => assert_eq!(applied(&outcome), changed, "{outcome:?}"),
                }
            }
            Action::CompareAndPut { key, correct, seed } => {
                let key = keys[key].clone();
                let actual = model.revision_of(&key);
                let expected = if correct { actual } else { actual + 7 };
                let value = noise(u64::from(seed), 10);
                let txn = Txn {
                    compare: vec![Compare {
                        key: key.clone(),
                        mod_revision: expected,
                    }],
                    ops: vec![Op::Put {
                        key: key.clone(),
                        value: value.clone().into(),
                    }],
                };
                let outcome = write(&store, txn, lazy);
                if correct {
                    assert_eq!(
                        applied(&outcome),
                        model.puts(&[(key, value)]),
                        "{outcome:?}"
                    );
                } else {
                    assert_eq!(
                        outcome,
                        TxnOutcome::CompareFailed {
                            key,
                            expected,
                            actual
                        }
                    );
                }
            }
            Action::Batch { keys: picks, seed } => {
                let mut puts: Vec<(String, Vec<u8>)> = Vec::new();
                for (i, pick) in picks.iter().enumerate() {
                    puts.push((keys[*pick].clone(), noise(u64::from(seed) + i as u64, 20)));
                }
                let txn = Txn {
                    compare: vec![],
                    ops: puts
                        .iter()
                        .map(|(k, v)| Op::Put {
                            key: k.clone(),
                            value: v.clone().into(),
                        })
                        .collect(),
                };
                let outcome = write(&store, txn, lazy);
                // Later puts of a repeated key win, as in the store.
                assert_eq!(applied(&outcome), model.puts(&puts), "{outcome:?}");
            }
            Action::Checkpoint => {
                let checkpoint = store.checkpoint().unwrap();
                let newest = model.checkpoints.last().map(|(s, r, _)| (*s, *r));
                if newest.map(|(_, r)| r) == Some(model.revision) {
                    assert_eq!(
                        Some(checkpoint.sequence),
                        newest.map(|(s, _)| s),
                        "unchanged state reuses the checkpoint"
                    );
                } else {
                    assert_eq!(checkpoint.revision, model.revision);
                    model.checkpoints.push((
                        checkpoint.sequence,
                        model.revision,
                        model.keys.clone(),
                    ));
                    let excess = model.checkpoints.len().saturating_sub(KEEP_NEWEST);
                    model.checkpoints.drain(..excess);
                }
                let retained: Vec<u64> = store.checkpoints().iter().map(|c| c.sequence).collect();
                assert_eq!(
                    retained,
                    model
                        .checkpoints
                        .iter()
                        .map(|(s, _, _)| *s)
                        .collect::<Vec<_>>()
                );
            }
            Action::ReadCheckpoint { which } => {
                let (sequence, revision, keys) =
                    &model.checkpoints[which % model.checkpoints.len()];
                let view = store.at_checkpoint(*sequence).unwrap();
                assert_eq!(view.revision(), *revision);
                check_state(&view, keys);
            }
            Action::Gc => {
                // Collection keeps the head and the checkpoints, not older views.
                held = None;
                store.gc(true).unwrap();
                for (sequence, _, keys) in &model.checkpoints {
                    check_state(&store.at_checkpoint(*sequence).unwrap(), keys);
                }
            }
            Action::Reopen { clean } => {
                held = None;
                if clean {
                    store.close().unwrap();
                } else {
                    if lazy {
                        // A crash loses what was only applied; the model
                        // cannot tell, so make it durable first.
                        store.flush(keel_store::Durability::Sync, None).unwrap();
                    }
                    drop(store);
                }
                store = Store::open(dir.path(), small_options(retention())).unwrap();
                assert!(!store.recovery().found_damage(), "{:?}", store.recovery());
                assert_eq!(store.recovery().truncated_bytes, 0);
            }
        }
        assert_eq!(store.revision(), model.revision);
        if step % read_every == 0 {
            if let Some((view, keys)) = &held {
                check_state(view, keys);
            }
            let view = store.snapshot();
            check_state(&view, &model.keys);
            held = Some((view, model.keys.clone()));
        }
    }
    drop(held);
    check_state(&store.snapshot(), &model.keys);
    // Checkpoints that retention dropped are gone, never silently replaced.
    assert!(matches!(
        store.at_checkpoint(u64::MAX),
        Err(StoreError::CheckpointNotFound { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(actions in prop::collection::vec(action(), 1..70)) {
        run(actions, false, 1);
    }

    #[test]
    fn store_matches_model_applying_in_place(actions in prop::collection::vec(action(), 1..70), read_every in 1usize..5) {
        run(actions, true, read_every);
    }
}
