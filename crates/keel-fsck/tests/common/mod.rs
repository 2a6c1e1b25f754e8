//! Helpers shared by the fsck tests: a store with nested directories,
//! chunked values and history, and a quiet way to run fsck.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use keel_fsck::check::{self, Choice, FsckOptions, Prompt, Requested, TargetChoice, Ui};
use keel_fsck::report::Report;
use keel_fsck::verify::Observer;
use keel_store::{Op, Store, StoreOptions, Txn};

pub type State = BTreeMap<String, Vec<u8>>;

/// Deterministic bytes (xorshift), distinct per seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn commit(store: &Store, state: &mut State, puts: Vec<(String, Vec<u8>)>) {
    let ops = puts
        .iter()
        .map(|(key, value)| Op::Put {
            key: key.clone(),
            value: value.clone().into(),
        })
        .collect();
    store
        .commit(&[Txn {
            compare: vec![],
            ops,
        }])
        .unwrap();
    store.checkpoint().unwrap();
    state.extend(puts);
}

/// Builds the fixture store in `dir`; returns (state at the older
/// checkpoint, current state).
///
/// `apps/web/cfg` (a one-chunk blob) and `apps/web/logo` (a chunked value)
/// change in the newest commit; `many/` has 41 entries in several nodes.
pub fn build(dir: &Path) -> (State, State) {
    let store = Store::init(dir, StoreOptions::default()).unwrap();
    let mut state = State::new();
    let mut first = vec![
        ("apps/web/cfg".to_string(), noise(1, 3000)),
        ("apps/web/logo".to_string(), noise(2, 300_000)),
        ("apps/db/conf".to_string(), b"size=1".to_vec()),
        ("top".to_string(), b"v1".to_vec()),
    ];
    for i in 0..40 {
        first.push((format!("many/k{i:03}"), noise(100 + i, 2000)));
    }
    commit(&store, &mut state, first);
    let previous = state.clone();
    commit(
        &store,
        &mut state,
        vec![
            ("apps/web/cfg".to_string(), noise(3, 3000)),
            ("apps/web/logo".to_string(), noise(4, 300_000)),
            ("top".to_string(), b"v2".to_vec()),
            ("many/k040".to_string(), noise(140, 2000)),
        ],
    );
    store.close().unwrap();
    (previous, state)
}

/// Every value the current state lists, read (and verified).
pub fn read_all(dir: &Path) -> State {
    let store = Store::open_read_only(dir).unwrap();
    let view = store.snapshot();
    view.list("", true)
        .unwrap()
        .into_iter()
        .map(|item| {
            let value = view.get_value(&item.key).unwrap().unwrap();
            (item.key, value.to_vec())
        })
        .collect()
}

/// A UI that answers the question with a fixed choice.
pub struct Answer(pub Choice);

impl Observer for Answer {}
impl Ui for Answer {
    fn choose(&mut self, prompt: &Prompt<'_>) -> Choice {
        let text = check::prompt_text(prompt);
        assert!(text.contains("[S/r/q]"), "{text}");
        self.0
    }
}

pub fn options(dir: &Path, requested: Requested) -> FsckOptions {
    FsckOptions {
        data_dir: dir.to_path_buf(),
        target: TargetChoice::Head,
        requested,
        max_damage: 1000,
        critical: Vec::new(),
        verbose: false,
    }
}

pub fn fsck(dir: &Path, requested: Requested) -> Report {
    check::run(&options(dir, requested), &mut Answer(Choice::Repair)).unwrap()
}

/// The error paths of a report, sorted, each once.
pub fn error_paths(report: &Report) -> Vec<String> {
    let mut paths: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.is_error())
        .map(|f| f.path.clone())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The bytes of every file under `dir` except reports, by relative path.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    files_into(dir, dir, &mut out);
    out
}

fn files_into(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("reports") || name == "DIRTY" || name == "LOCK" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            files_into(root, &path, out);
        } else {
            out.insert(name, std::fs::read(&path).unwrap());
        }
    }
}

/// The seed of a randomized test: `KEEL_TEST_SEED` or a fresh one, printed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{test} seed: {seed} (replay with KEEL_TEST_SEED={seed})");
    seed
}
