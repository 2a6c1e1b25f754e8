//! Crash test: a child process commits in a loop and prints each
//! acknowledged commit; we SIGKILL it at random moments (at least 200 times),
//! reopen the store and check that every acknowledged commit is there, that
//! nothing else but the one commit in flight at each kill appeared, and that
//! the store is consistent. The child also checkpoints and collects garbage,
//! so kills land in compaction and in recovery itself.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_store::{Store, StoreOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SLOTS: u64 = 500;
const KILLS: usize = 200;
const TIME_LIMIT: Duration = Duration::from_secs(600);

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

/// The commit number stored in a value written by `keel debug commit-loop`.
fn commit_number(value: &[u8]) -> u64 {
    let text = std::str::from_utf8(
        &value[..value
            .iter()
            .position(|&b| b == b';')
            .expect("value names its commit")],
    )
    .unwrap();
    text.strip_prefix("commit ").unwrap().parse().unwrap()
}

/// Must match `crash_value` in the CLI's debug command.
fn expected_value(n: u64) -> Vec<u8> {
    let mut value = format!("commit {n};").into_bytes();
    if n.is_multiple_of(50) {
        value.resize(20_000, (n % 251) as u8);
    }
    value
}

struct Ledger {
    /// Newest acknowledged commit per slot.
    acked: HashMap<u64, u64>,
    acked_max: Option<u64>,
    /// Commits that were in flight when a child died: durable or not.
    in_flight: BTreeSet<u64>,
}

/// Reopens the store as a restarting node would and checks it against the ledger.
/// Returns the highest commit number found.
fn verify(dir: &Path, ledger: &Ledger, context: &str) -> u64 {
    let store = Store::open(dir, StoreOptions::default())
        .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    assert!(
        !store.recovery().found_damage(),
        "{context}: a crash must never look like damage: {:?}",
        store.recovery()
    );
    let view = store.snapshot();
    let mut highest = 0;
    for slot in 0..SLOTS {
        let key = format!("crash/s{slot}");
        let found = view
            .get_value(&key)
            .unwrap_or_else(|e| panic!("{context}: reading {key}: {e}"));
        let acked = ledger.acked.get(&slot).copied();
        let Some(found) = found else {
            assert_eq!(
                acked, None,
                "{context}: acknowledged commit {acked:?} of {key} is lost"
            );
            continue;
        };
        let n = commit_number(&found);
        assert_eq!(
            found.as_ref(),
            expected_value(n).as_slice(),
            "{context}: {key} holds damaged bytes"
        );
        assert_eq!(
            n % SLOTS,
            slot,
            "{context}: {key} holds commit {n} of another slot"
        );
        let acceptable =
            Some(n) == acked || (ledger.in_flight.contains(&n) && acked.is_none_or(|a| n > a));
        assert!(
            acceptable,
            "{context}: {key} holds commit {n}, newest acknowledged is {acked:?}"
        );
        highest = highest.max(n);
    }
    for checkpoint in store.checkpoints() {
        let old = store.at_checkpoint(checkpoint.sequence).unwrap();
        for item in old.list("", true).unwrap() {
            old.get_value(&item.key).unwrap_or_else(|e| {
                panic!(
                    "{context}: checkpoint {} {}: {e}",
                    checkpoint.sequence, item.key
                )
            });
        }
    }
    highest
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_commit() {
    let seed: u64 = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed: {seed} (replay with KEEL_TEST_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let status = keel()
        .args(["init", "--data-dir"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());

    let mut ledger = Ledger {
        acked: HashMap::new(),
        acked_max: None,
        in_flight: BTreeSet::new(),
    };
    let mut next = 0u64;
    let started = Instant::now();
    for kill in 1..=KILLS {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "only {kill} kills within {TIME_LIMIT:?}"
        );
        let mut child = keel()
            .args(["debug", "commit-loop", "--data-dir"])
            .arg(&data)
            .args(["--start", &next.to_string(), "--slots", &SLOTS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(
                    line.trim()
                        .parse::<u64>()
                        .expect("commit-loop prints numbers"),
                );
            }
        });
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..40_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut last = None;
        for n in rx.try_iter() {
            ledger.acked.insert(n % SLOTS, n);
            ledger.acked_max = Some(ledger.acked_max.map_or(n, |m| m.max(n)));
            last = Some(n);
        }
        // The commit after the last acknowledged one may or may not be durable.
        ledger.in_flight.insert(last.map_or(next, |n| n + 1));
        let context = format!("seed {seed}, kill {kill}");
        let highest = verify(&data, &ledger, &context);
        next = next
            .max(highest + 1)
            .max(ledger.acked_max.map_or(0, |m| m + 2));
        next = next.max(*ledger.in_flight.last().unwrap() + 1);
    }
    println!(
        "{KILLS} kills in {:?}, {} commits acknowledged",
        started.elapsed(),
        ledger.acked_max.map_or(0, |m| m + 1)
    );
    assert!(
        ledger.acked_max.unwrap_or(0) > 200,
        "the child must have made progress between kills"
    );
}
