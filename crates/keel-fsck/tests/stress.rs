//! Stress: 20,000 keys across nested directories, 30% of the value blobs
//! damaged at random (half deleted, half with flipped bits). fsck must find
//! every damaged key and nothing else; the repair must leave a store whose
//! second fsck is clean, whose undamaged keys read their original values,
//! and whose lost+found/ holds exactly the damaged keys.

mod common;

use std::collections::BTreeSet;

use common::{error_paths, noise, options, read_all, seed, Answer, State};
use keel_fsck::check::{self, Choice, Requested};
use keel_fsck::corrupt::{corrupt, Mode};
use keel_fsck::report::ActionTaken;
use keel_store::{Op, Store, StoreOptions, Txn};
use rand::{Rng, SeedableRng};

const KEYS: usize = 20_000;
const DAMAGED_PERCENT: usize = 30;

#[test]
fn thirty_percent_of_twenty_thousand_blobs_damaged_are_all_found_and_repaired() {
    let seed = seed("stress");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path(), StoreOptions::default()).unwrap();
    let mut state = State::new();
    for batch in 0..KEYS / 1000 {
        let mut ops = Vec::with_capacity(1000);
        for i in batch * 1000..(batch + 1) * 1000 {
            let key = format!("d{:02}/e{:02}/f{}/k{i:05}", i % 17, i % 13, i % 3);
            // 1-3 KiB: above the inline limit, so each value is one blob.
            let value = noise(seed ^ (i as u64 + 1), rng.gen_range(1100..3072));
            ops.push(Op::Put {
                key: key.clone(),
                value: value.clone().into(),
            });
            state.insert(key, value);
        }
        store
            .commit(&[Txn {
                compare: vec![],
                ops,
            }])
            .unwrap();
    }
    store.checkpoint().unwrap();
    store.close().unwrap();

    let each = KEYS * DAMAGED_PERCENT / 100 / 2;
    let deleted = corrupt(dir.path(), Mode::DeleteBlob, None, each, seed).unwrap();
    let flipped = corrupt(dir.path(), Mode::FlipBits, None, each, seed.wrapping_add(1)).unwrap();
    let damaged: BTreeSet<String> = deleted
        .damaged
        .iter()
        .chain(&flipped.damaged)
        .map(|d| d.path.clone())
        .collect();
    assert_eq!(
        damaged.len(),
        2 * each,
        "each damaged blob belongs to one key"
    );

    let report = check::run(
        &options(dir.path(), Requested::ReportOnly),
        &mut Answer(Choice::Quit),
    )
    .unwrap();
    let found: BTreeSet<String> = error_paths(&report).into_iter().collect();
    assert_eq!(
        found, damaged,
        "fsck finds every damaged key and nothing else"
    );

    let mut repair = options(dir.path(), Requested::Repair);
    repair.max_damage = KEYS as u64;
    let report = check::run(&repair, &mut Answer(Choice::Quit)).unwrap();
    assert_eq!(
        report.action,
        ActionTaken::Repaired,
        "{:?}",
        report.action_detail
    );
    let moved: BTreeSet<String> = report
        .repair
        .unwrap()
        .moved
        .into_iter()
        .map(|m| m.from)
        .collect();
    assert_eq!(moved, damaged);

    let second = check::run(
        &options(dir.path(), Requested::ReportOnly),
        &mut Answer(Choice::Quit),
    )
    .unwrap();
    assert_eq!(second.findings, vec![], "the second fsck is clean");
    let after = read_all(dir.path());
    for (key, value) in &state {
        if damaged.contains(key) {
            assert!(!after.contains_key(key), "{key} was unlinked");
        } else {
            assert_eq!(after.get(key), Some(value), "{key} keeps its value");
        }
    }
    let lost_found: BTreeSet<String> = after
        .keys()
        .filter_map(|k| k.strip_prefix("lost+found/"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        lost_found, damaged,
        "lost+found holds exactly the damaged keys"
    );
    assert_eq!(after.len(), KEYS);
}
