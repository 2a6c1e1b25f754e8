//! A full disk under a store (issue 6, "disk full"): appends run out of
//! space at random points (inside a batch, a segment roll, a checkpoint, a
//! compaction). The store must keep every acknowledged commit, apply nothing
//! of a failed one, accept commits again once space exists without being
//! reopened, and reopen clean: nothing cut by recovery, fsck finds nothing
//! at the head or at any retained checkpoint.
//!
//! The full disk is the store's space-limit seam (`keel_store::space`): an
//! append that does not fit writes what fits and fails with `ENOSPC`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{noise, options, seed};
use keel_fsck::check::{self, Choice, TargetChoice};
use keel_store::{Op, Retention, SpaceLimit, Store, StoreError, StoreOptions, Txn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rounds of "fill until full, then free space".
const ROUNDS: usize = 8;
/// Commits tried per round, at most (a round ends at the first full disk).
const COMMITS_PER_ROUND_MAX: usize = 400;

type Model = BTreeMap<String, Vec<u8>>;

fn store_options(limit: &Arc<SpaceLimit>) -> StoreOptions {
    StoreOptions {
        // Small segments, so rolls, hints and compaction happen under the limit.
        segment_bytes_target: 96 * 1024,
        retention: Some(Retention {
            keep_newest: 3,
            keep_hourly_hours: 0,
        }),
        space_limit: Some(limit.clone()),
        ..StoreOptions::default()
    }
}

/// A transaction of one to four puts (new keys or overwrites) and sometimes
/// a delete, with the model it produces if it is acknowledged.
fn random_txn(rng: &mut ChaCha8Rng, model: &Model, serial: u64) -> (Txn, Model) {
    let mut after = model.clone();
    let mut ops = Vec::new();
    for n in 0..rng.gen_range(1..=4u64) {
        let key = format!("d{}/k{}", rng.gen_range(0..4), rng.gen_range(0..60));
        let size = if rng.gen_bool(0.2) {
            rng.gen_range(2_000..40_000)
        } else {
            rng.gen_range(1..600)
        };
        let value = noise(serial * 10 + n, size);
        after.insert(key.clone(), value.clone());
        ops.push(Op::Put {
            key,
            value: value.into(),
        });
    }
    if rng.gen_bool(0.2) {
        if let Some(key) = after.keys().nth(rng.gen_range(0..after.len())).cloned() {
            after.remove(&key);
            ops.push(Op::Delete { key });
        }
    }
    (
        Txn {
            compare: Vec::new(),
            ops,
        },
        after,
    )
}

fn assert_holds(store: &Store, model: &Model, when: &str) {
    let view = store.snapshot();
    let listed: Vec<String> = view
        .list("", true)
        .unwrap()
        .into_iter()
        .map(|item| item.key)
        .collect();
    let expected: Vec<String> = model.keys().cloned().collect();
    assert_eq!(listed, expected, "{when}: the keys differ");
    for (key, value) in model {
        let stored = view.get_value(key).unwrap().unwrap();
        assert!(stored == value[..], "{when}: {key} has the wrong value");
    }
}

fn is_disk_full(result: &Result<impl Sized, StoreError>) -> bool {
    match result {
        Ok(_) => false,
        Err(StoreError::DiskFull { .. }) => true,
        Err(error) => panic!("expected success or a full disk, got: {error}"),
    }
}

#[test]
fn a_full_disk_loses_nothing_acknowledged_and_writes_resume_without_reopening() {
    let seed = seed("a_full_disk_loses_nothing_acknowledged");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let limit = Arc::new(SpaceLimit::default());
    let store = Store::init(dir.path(), store_options(&limit)).unwrap();
    let mut model = Model::new();
    let mut serial = 0u64;
    let mut rounds_full = 0;
    for round in 0..ROUNDS {
        limit.set_remaining(Some(rng.gen_range(4_000..300_000)));
        for _ in 0..COMMITS_PER_ROUND_MAX {
            serial += 1;
            let (txn, after) = random_txn(&mut rng, &model, serial);
            let committed = store.commit(&[txn]);
            if is_disk_full(&committed) {
                rounds_full += 1;
                break;
            }
            model = after;
            // Checkpoints and collection may run out of space too.
            if rng.gen_bool(0.15) {
                let _ = is_disk_full(&store.checkpoint());
            }
            if rng.gen_bool(0.1) {
                let _ = is_disk_full(&store.gc(rng.gen_bool(0.5)));
            }
        }
        assert_holds(&store, &model, &format!("round {round}, disk full"));
        // Space is freed: the same open store takes writes again.
        limit.set_remaining(None);
        serial += 1;
        let (txn, after) = random_txn(&mut rng, &model, serial);
        store
            .commit(&[txn])
            .unwrap_or_else(|e| panic!("round {round}: a commit after space was freed: {e}"));
        model = after;
        store.checkpoint().unwrap();
        assert_holds(&store, &model, &format!("round {round}, space freed"));
    }
    assert_eq!(
        rounds_full, ROUNDS,
        "every round must run out of space, or the test proves nothing"
    );
    store.close().unwrap();

    let reopened = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let recovery = reopened.recovery().clone();
    assert!(
        !recovery.found_damage() && recovery.truncated_bytes == 0,
        "a full disk must leave nothing for recovery to cut: {recovery:?}"
    );
    assert_holds(&reopened, &model, "reopened");
    let checkpoints = reopened.checkpoints();
    drop(reopened);

    let mut targets = vec![TargetChoice::Head];
    targets.extend(
        checkpoints
            .iter()
            .map(|c| TargetChoice::Checkpoint(c.sequence)),
    );
    for target in targets {
        let mut fsck_options = options(dir.path(), check::Requested::ReportOnly);
        fsck_options.target = target.clone();
        let report = check::run(&fsck_options, &mut common::Answer(Choice::Quit)).unwrap();
        assert_eq!(
            report.errors, 0,
            "fsck of {target:?} found: {:?}",
            report.findings
        );
    }
}
