//! Torn writes: damage the tail of every file the store appends to, at
//! random offsets, and check the store opens (no panic, no hang), keeps every
//! commit before the damage, and accepts new commits.
//!
//! PySyncObj: a node's commit index pointed past the end of its journal
//! after a crash, and start-up deadlocked. Here the head is whatever the
//! intact prefix of the log proves, so there is nothing to wait for.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{noise, small_options};
use keel_store::{Retention, Store, StoreOptions, Txn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One acknowledged commit: where the log ended and what the state was.
struct Acked {
    segment: u32,
    end: u64,
    revision: u64,
    /// key -> value after this commit
    state: Vec<(String, Vec<u8>)>,
}

fn options() -> StoreOptions {
    small_options(Retention {
        keep_newest: 3,
        keep_hourly_hours: 0,
    })
}

/// Builds a store with a history of commits, recording where each ended.
fn build(dir: &Path, seed: u64) -> Vec<Acked> {
    let store = Store::init(dir, options()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = std::collections::BTreeMap::new();
    let mut acked = Vec::new();
    for i in 0..60u64 {
        let key = format!("d{}/k{}", i % 3, rng.gen_range(0..20));
        let size = if rng.gen_bool(0.1) {
            30_000
        } else {
            rng.gen_range(1..200)
        };
        let value = noise(seed.wrapping_mul(1000).wrapping_add(i), size);
        store
            .commit(&[Txn::put(key.clone(), value.clone())])
            .unwrap();
        state.insert(key, value);
        if i % 15 == 14 {
            store.checkpoint().unwrap();
        }
        let segment = store.pack().active_segment().unwrap();
        acked.push(Acked {
            segment,
            end: std::fs::metadata(store.pack().segment_path(segment))
                .unwrap()
                .len(),
            revision: store.revision(),
            state: state.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        });
    }
    store.close().unwrap();
    acked
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Opens on another thread so a hang fails the test instead of stalling it.
fn open_bounded(dir: PathBuf) -> Store {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Store::open(&dir, options()));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("opening a damaged store must never hang")
        .expect("a torn tail must never stop the store from opening")
}

/// Truncates or zeroes `path` from `offset`; returns the offset of the first
/// byte that actually changed (zeroing bytes that were already zero is no damage).
fn damage_tail(path: &Path, offset: u64, zero: bool) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    if zero {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&vec![0u8; bytes.len() - offset as usize], offset)
            .unwrap();
        let changed = bytes[offset as usize..].iter().position(|&b| b != 0);
        changed.map_or(bytes.len() as u64, |i| offset + i as u64)
    } else {
        file.set_len(offset).unwrap();
        offset
    }
}

fn check(store: &Store, expected: &Acked) {
    assert_eq!(store.revision(), expected.revision);
    let view = store.snapshot();
    for (key, value) in &expected.state {
        assert_eq!(
            view.get_value(key).unwrap().as_deref(),
            Some(value.as_slice()),
            "{key}"
        );
    }
    assert_eq!(view.list("", true).unwrap().len(), expected.state.len());
}

#[test]
fn torn_tails_keep_every_earlier_commit() {
    let seed: u64 = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("torn-write test seed: {seed} (replay with KEEL_TEST_SEED={seed})");
    let base = tempfile::tempdir().unwrap();
    let pristine = base.path().join("pristine");
    let acked = build(&pristine, seed);
    let active = acked.last().unwrap().segment;
    let segment_file = format!("pack/{active:08}.seg");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for trial in 0..80 {
        let dir = base.path().join(format!("trial-{trial}"));
        copy_dir(&pristine, &dir);
        let damage_checkpoints = rng.gen_bool(0.25);
        let file = if damage_checkpoints {
            "checkpoints.log".to_string()
        } else {
            segment_file.clone()
        };
        let path = dir.join(&file);
        let len = std::fs::metadata(&path).unwrap().len();
        let offset = rng.gen_range(0..=len);
        let zero = rng.gen_bool(0.5);
        let offset = damage_tail(&path, offset, zero);
        let store = open_bounded(dir.clone());
        // The newest commit whose bytes all lie before the damage survives.
        let expected = if damage_checkpoints {
            acked.last().unwrap()
        } else {
            acked
                .iter()
                .rev()
                .find(|a| a.segment < active || a.end <= offset)
                .expect("earlier segments hold older commits")
        };
        let context = format!(
            "trial {trial}: {} {file} at {offset} of {len}",
            if zero { "zeroed" } else { "truncated" }
        );
        println!("{context}: head revision {}", store.revision());
        check(&store, expected);
        // The store keeps working and a second open finds a clean log.
        let outcome = store
            .commit(&[Txn::put("after/damage", "ok")])
            .unwrap()
            .remove(0);
        let newest_acked = acked.last().unwrap().revision;
        assert!(
            matches!(outcome, keel_store::TxnOutcome::Applied { revision, .. } if revision > newest_acked),
            "{context}: revisions must never be reused: {outcome:?} after {newest_acked}"
        );
        store.close().unwrap();
        let reopened = open_bounded(dir.clone());
        assert_eq!(reopened.recovery().truncated_bytes, 0, "{context}");
        assert_eq!(
            reopened
                .snapshot()
                .get_value("after/damage")
                .unwrap()
                .unwrap(),
            "ok"
        );
        drop(reopened);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn blob_of(store: &Store, key: &str) -> keel_store::Hash {
    match store.get(key).unwrap().unwrap().value {
        keel_store::EntryValue::Blob { hash, .. } => hash,
        other => panic!("expected a blob, got {other:?}"),
    }
}

#[test]
fn decay_of_synced_data_keeps_every_commit_and_reports_the_blob() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("store");
    let store = Store::init(&dir, StoreOptions::default()).unwrap();
    store.commit(&[Txn::put("needed", noise(2, 5000))]).unwrap();
    let needed = blob_of(&store, "needed");
    store.commit(&[Txn::put("later", "3")]).unwrap();
    let head = store.revision();
    let location = store.pack().location(&needed).unwrap();
    let segment = store.pack().segment_path(location.segment);
    drop(store);
    // Bit rot inside data that a later commit proves was already durable.
    flip(&segment, location.offset + 10);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(
        store.revision(),
        head,
        "decay is not a crash: no acknowledged commit is dropped"
    );
    assert_eq!(store.recovery().decayed_ranges, 1);
    assert_eq!(store.snapshot().get_value("later").unwrap().unwrap(), "3");
    assert!(matches!(
        store.snapshot().get_value("needed"),
        Err(keel_store::StoreError::MissingBlob { hash }) if hash == needed
    ));
    let quarantine = store
        .recovery()
        .quarantined
        .clone()
        .expect("damaged bytes are kept aside");
    assert_eq!(std::fs::read_dir(quarantine).unwrap().count(), 1);
    store.close().unwrap();
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert!(
        !store.recovery().found_damage(),
        "padding leaves a clean log: {:?}",
        store.recovery()
    );
}

#[test]
fn damage_in_unsynced_data_needed_by_the_head_rolls_back_and_quarantines() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("store");
    let store = Store::init(&dir, StoreOptions::default()).unwrap();
    store.commit(&[Txn::put("first", "1")]).unwrap();
    let durable = store.revision();
    // Written but never synced: what a crash can tear.
    store.apply(&[Txn::put("needed", noise(2, 5000))]).unwrap();
    store.flush(keel_store::Durability::Buffered, None).unwrap();
    store.apply(&[Txn::put("later", "3")]).unwrap();
    store.flush(keel_store::Durability::Buffered, None).unwrap();
    let needed = blob_of(&store, "needed");
    let location = store.pack().location(&needed).unwrap();
    let segment = store.pack().segment_path(location.segment);
    drop(store);
    flip(&segment, location.offset + 10);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    // The newest commits need the damaged blob: fall back, keep the bytes aside.
    assert_eq!(store.revision(), durable);
    let quarantine = store
        .recovery()
        .quarantined
        .clone()
        .expect("damaged tail must be kept");
    assert_eq!(std::fs::read_dir(quarantine).unwrap().count(), 1);
    assert_eq!(store.snapshot().get_value("first").unwrap().unwrap(), "1");
}

#[test]
fn damage_in_unsynced_garbage_keeps_a_complete_newer_commit() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("store");
    let store = Store::init(&dir, StoreOptions::default()).unwrap();
    store.apply(&[Txn::put("old", noise(1, 5000))]).unwrap();
    store.flush(keel_store::Durability::Buffered, None).unwrap();
    let garbage = blob_of(&store, "old");
    store.apply(&[Txn::put("old", "small now")]).unwrap();
    store.apply(&[Txn::put("new", "kept")]).unwrap();
    store.flush(keel_store::Durability::Buffered, None).unwrap();
    let head = store.revision();
    let location = store.pack().location(&garbage).unwrap();
    let segment = store.pack().segment_path(location.segment);
    drop(store);
    flip(&segment, location.offset + 10);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(
        store.revision(),
        head,
        "the newest commit does not need the damaged blob"
    );
    assert_eq!(store.recovery().padded_gaps, 1);
    assert_eq!(store.snapshot().get_value("new").unwrap().unwrap(), "kept");
    store.close().unwrap();
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    assert!(
        !store.recovery().found_damage(),
        "padding leaves a clean log: {:?}",
        store.recovery()
    );
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset).unwrap();
}
