//! Garbage collection runs while writes go on: whatever runs concurrently,
//! no collection may drop a blob that a committed state or a retained
//! checkpoint refers to.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{noise, seed, small_options};
use keel_store::{Durability, Retention, Store, Txn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROUNDS: usize = 2_000;
const KEYS: u64 = 6;
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// A few values reused again and again, so that writes keep bringing back
/// blobs that an earlier state dropped: inline, one blob, and chunked (chunks
/// and a chunk list). Most are referenced by nothing most of the time.
fn values() -> Vec<Vec<u8>> {
    let mut values = vec![b"a".to_vec(), noise(1, 3_000), noise(2, 3_000)];
    values.extend((3..9).map(|seed| noise(seed, 40_000)));
    values
}

fn key(n: u64) -> String {
    format!("d{}/k{n:03}", n % 3)
}

#[test]
fn collections_concurrent_with_writes_lose_nothing() {
    let seed = seed("collections_concurrent_with_writes_lose_nothing");
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        keep_newest: 2,
        keep_hourly_hours: 0,
    };
    let store = Store::init(dir.path(), small_options(retention)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let collector = {
        let (store, stop, passes) = (store.clone(), stop.clone(), passes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                store.gc(true).unwrap();
                passes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let values = values();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        if started.elapsed() > TIME_LIMIT {
            println!("stopped after {round} rounds (time limit)");
            break;
        }
        let mut txns = Vec::new();
        for _ in 0..rng.gen_range(1..6) {
            let n = rng.gen_range(0..KEYS);
            if rng.gen_bool(0.2) {
                txns.push(Txn::delete(key(n)));
                model.remove(&key(n));
            } else {
                let v = rng.gen_range(0..values.len());
                txns.push(Txn::put(key(n), values[v].clone()));
                model.insert(key(n), v);
            }
        }
        store.apply(&txns).unwrap();
        // A blob dropped under a key shows at the next round at the latest.
        let view = store.snapshot();
        for n in 0..KEYS {
            let expected = model.get(&key(n)).map(|v| &values[*v][..]);
            let actual = view.get_value(&key(n));
            assert!(
                matches!(&actual, Ok(a) if a.as_deref() == expected),
                "{} in round {round}: {actual:?} (seed {seed})",
                key(n)
            );
        }
        match rng.gen_range(0..10) {
            0 => drop(store.checkpoint().unwrap()),
            1..=4 => drop(store.flush(Durability::Buffered, None).unwrap()),
            _ => {}
        }
    }
    stop.store(true, Ordering::Release);
    collector.join().unwrap();
    let passes = passes.load(Ordering::Relaxed);
    println!("{passes} collections ran during the writes");
    assert!(passes > 1, "the collector must have run during the writes");
    store.flush(Durability::Sync, None).unwrap();
    store.gc(true).unwrap();
    let check = |store: &Store| {
        let view = store.snapshot();
        for n in 0..KEYS {
            let expected = model.get(&key(n)).map(|v| &values[*v][..]);
            let actual = view.get_value(&key(n)).unwrap();
            assert_eq!(actual.as_deref(), expected, "key {} (seed {seed})", key(n));
        }
        for checkpoint in store.checkpoints() {
            let view = store.at_checkpoint(checkpoint.sequence).unwrap();
            for item in view.list("", true).unwrap() {
                view.get_value(&item.key).unwrap().unwrap();
            }
        }
    };
    check(&store);
    drop(store);
    let store = Store::open(dir.path(), small_options(retention)).unwrap();
    assert!(!store.recovery().found_damage(), "{:?}", store.recovery());
    check(&store);
}
