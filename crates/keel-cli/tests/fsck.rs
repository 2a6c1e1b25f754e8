//! `keel fsck`, `keel dump`, `keel restore` and `keel debug corrupt` through
//! the binary: every corruption mode with every action, exit codes, refusals,
//! and random damage to any file of the data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keel_store::{Op, Retention, Store, StoreOptions, Txn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn keel_once(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `keel`, retrying a refusal caused only by a lock another test
/// thread's fork inherited: fixtures are built in this process, and a child
/// forked by a parallel test holds a copy of the LOCK descriptor until it
/// execs, so the lock can outlive `Store::close` by a moment.
fn keel(args: &[&str]) -> Output {
    for _ in 0..50 {
        let output = keel_once(args);
        if !(code(&output) == 2 && text(&output).contains("in use by another process")) {
            return output;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    keel_once(args)
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(output)))
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// A store with nested directories, chunked values and three checkpoints;
/// small segments so some are sealed (with hint files).
fn build(dir: &Path) {
    let options = StoreOptions {
        segment_bytes_target: 64 * 1024,
        retention: Some(Retention {
            keep_newest: 10,
            keep_hourly_hours: 0,
        }),
        ..StoreOptions::default()
    };
    let store = Store::init(dir, options).unwrap();
    let mut ops = vec![
        put("apps/web/cfg", noise(1, 3000)),
        put("apps/web/logo", noise(2, 300_000)),
        put("apps/db/conf", b"size=1".to_vec()),
        put("top", b"v1".to_vec()),
    ];
    ops.extend((0..40).map(|i| put(&format!("many/k{i:03}"), noise(100 + i, 2000))));
    store
        .commit(&[Txn {
            compare: vec![],
            ops,
        }])
        .unwrap();
    store.checkpoint().unwrap();
    let ops = vec![
        put("apps/web/cfg", noise(3, 3000)),
        put("apps/web/logo", noise(4, 300_000)),
        put("top", b"v2".to_vec()),
    ];
    store
        .commit(&[Txn {
            compare: vec![],
            ops,
        }])
        .unwrap();
    store.checkpoint().unwrap();
    store.close().unwrap();
}

fn put(key: &str, value: Vec<u8>) -> Op {
    Op::Put {
        key: key.to_string(),
        value: value.into(),
    }
}

struct Case {
    mode: &'static str,
    key: &'static str,
    /// The words of the finding line.
    kind: &'static str,
    moved: &'static [&'static str],
    unlinked: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        mode: "delete-blob",
        key: "apps/web/cfg",
        kind: "missing blob",
        moved: &["apps/web/cfg"],
        unlinked: &[],
    },
    Case {
        mode: "flip-bits",
        key: "apps/web/logo",
        kind: "corrupt blob",
        moved: &["apps/web/logo"],
        unlinked: &[],
    },
    Case {
        mode: "delete-dir",
        key: "apps/web",
        kind: "missing blob",
        moved: &[],
        unlinked: &["apps/web"],
    },
    Case {
        mode: "damage-dir",
        key: "apps/db",
        kind: "corrupt blob",
        moved: &[],
        unlinked: &["apps/db"],
    },
    Case {
        mode: "delete-dir-node",
        key: "many",
        kind: "missing blob",
        moved: &[],
        unlinked: &[],
    },
];

const ACTIONS: &[&[&str]] = &[&[], &["--repair"], &["--rollback"], &["--yes"]];

#[test]
fn every_corruption_mode_with_every_action() {
    for case in CASES {
        for action in ACTIONS {
            let context = format!("{} {:?}", case.mode, action);
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            build(dir.path());
            let corrupted = keel(&[
                "debug",
                "corrupt",
                "--data-dir",
                d,
                "--mode",
                case.mode,
                "--key",
                case.key,
                "--seed",
                "1",
            ]);
            assert_eq!(code(&corrupted), 0, "{context}: {}", text(&corrupted));
            let damage = json(&corrupted);
            let damaged = damage["damaged"].as_array().unwrap();
            assert_eq!(damaged.len(), 1, "{context}");
            assert_eq!(damaged[0]["path"], case.key, "{context}");
            let blob = damaged[0]["blob"].as_str().unwrap();

            let report = keel(&["fsck", "--data-dir", d]);
            assert_eq!(code(&report), 1, "{context}: {}", text(&report));
            let out = String::from_utf8_lossy(&report.stdout);
            let line = format!("{}: {} {blob}", case.key, case.kind);
            assert!(
                out.lines().any(|l| l.starts_with(&line)),
                "{context}: no line {line:?} in\n{out}"
            );
            assert!(out.contains("Total errors: 1"), "{context}: {out}");

            let mut args = vec!["--json", "fsck", "--data-dir", d];
            args.extend_from_slice(action);
            let acted = keel(&args);
            assert_eq!(
                code(&acted),
                1,
                "{context}: problems found, even when fixed: {}",
                text(&acted)
            );
            let doc = json(&acted);
            assert_eq!(doc["format"], "keel-fsck-report");
            let errors: Vec<&str> = doc["findings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["severity"] == "error")
                .map(|f| f["path"].as_str().unwrap())
                .collect();
            assert_eq!(errors, [case.key], "{context}");
            match *action {
                [] => assert_eq!(doc["action"], "none", "{context}"),
                ["--rollback"] => assert_eq!(doc["action"], "rolled_back", "{context}"),
                _ => {
                    assert_eq!(doc["action"], "repaired", "{context}");
                    let moved: Vec<&str> = doc["repair"]["moved"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m["from"].as_str().unwrap())
                        .collect();
                    assert_eq!(moved, case.moved, "{context}");
                    let unlinked: Vec<&String> = doc["repair"]["unlinked_directories"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .collect();
                    assert_eq!(unlinked, case.unlinked, "{context}");
                }
            }
            let report_file = doc["report_file"].as_str().unwrap();
            assert!(
                Path::new(report_file).starts_with(dir.path().join("reports")),
                "{context}"
            );
            let again = keel(&["fsck", "--data-dir", d]);
            let expected = if action.is_empty() { 1 } else { 0 };
            assert_eq!(
                code(&again),
                expected,
                "{context}: second fsck: {}",
                text(&again)
            );
            if !action.is_empty() {
                assert_eq!(
                    code(&keel(&["kv", "ls", "--data-dir", d, "-r"])),
                    0,
                    "{context}"
                );
            }
        }
    }
}

#[test]
fn verbose_lists_every_path_and_the_store_in_use_refuses_repair_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    build(dir.path());
    let verbose = keel(&["fsck", "--data-dir", d, "-v"]);
    assert_eq!(code(&verbose), 0, "{}", text(&verbose));
    let out = String::from_utf8_lossy(&verbose.stdout);
    for path in ["apps", "apps/web", "apps/web/cfg", "many/k039", "top"] {
        assert!(out.lines().any(|l| l == path), "-v lists {path}: {out}");
    }
    assert!(out.contains("Total errors: 0"));

    let corrupted = keel(&[
        "debug",
        "corrupt",
        "--data-dir",
        d,
        "--mode",
        "delete-blob",
        "--key",
        "apps/web/cfg",
        "--seed",
        "1",
    ]);
    assert_eq!(code(&corrupted), 0, "{}", text(&corrupted));
    let held = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let refused = keel_once(&["fsck", "--data-dir", d, "--repair"]);
    assert_eq!(code(&refused), 2, "{}", text(&refused));
    assert!(
        text(&refused).contains("in use by another process"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        code(&keel_once(&[
            "debug",
            "corrupt",
            "--data-dir",
            d,
            "--mode",
            "delete-blob"
        ])),
        2
    );
    let emergency = dir.path().join("emergency.tar");
    let dumped = keel_once(&[
        "dump",
        "--data-dir",
        d,
        "--ignore-failed-read",
        emergency.to_str().unwrap(),
    ]);
    assert_eq!(
        code(&dumped),
        0,
        "an emergency dump works while the store is held: {}",
        text(&dumped)
    );
    assert!(
        text(&dumped).contains("skipped apps/web/cfg"),
        "{}",
        text(&dumped)
    );
    let read_only = keel(&["fsck", "--data-dir", d, "-q"]);
    assert_eq!(
        code(&read_only),
        1,
        "read-only fsck works while held: {}",
        text(&read_only)
    );
    assert!(
        text(&read_only).contains("apps/web/cfg: missing blob"),
        "{}",
        text(&read_only)
    );
    drop(held);
    assert_eq!(
        code(&keel(&["fsck", "--data-dir", d, "--checkpoint", "999"])),
        2
    );
    assert_eq!(
        code(&keel(&["fsck", "--data-dir", d, "--root", "nonsense"])),
        2
    );
    assert_eq!(
        code(&keel(&["fsck", "--data-dir", d, "--repair", "--rollback"])),
        2
    );
}

#[test]
fn dump_restore_and_restore_at_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("source");
    build(&d);
    let d = d.to_str().unwrap();
    let file = dir.path().join("dump.tar");
    let f = file.to_str().unwrap();
    let dumped = keel(&["--json", "dump", "--data-dir", d, f]);
    assert_eq!(code(&dumped), 0, "{}", text(&dumped));
    assert_eq!(json(&dumped)["keys"], 44);

    let fresh = dir.path().join("fresh");
    let restored = keel(&["restore", "--data-dir", fresh.to_str().unwrap(), f]);
    assert_eq!(code(&restored), 0, "{}", text(&restored));
    let listed = |dir: &Path| keel(&["kv", "ls", "--data-dir", dir.to_str().unwrap(), "-r"]).stdout;
    assert_eq!(listed(&fresh), listed(Path::new(d)));
    let get = keel(&[
        "kv",
        "get",
        "--data-dir",
        fresh.to_str().unwrap(),
        "apps/web/logo",
    ]);
    assert_eq!(get.stdout, noise(4, 300_000));

    let later = dir.path().join("later");
    assert_eq!(
        code(&keel(&["init", "--data-dir", later.to_str().unwrap()])),
        0
    );
    let marked = keel(&[
        "restore",
        "--data-dir",
        later.to_str().unwrap(),
        f,
        "--at-next-start",
    ]);
    assert_eq!(code(&marked), 0, "{}", text(&marked));
    let put = keel(&[
        "kv",
        "put",
        "--data-dir",
        later.to_str().unwrap(),
        "extra",
        "1",
    ]);
    assert_eq!(code(&put), 0, "{}", text(&put));
    assert!(text(&put).contains("restored"), "{}", text(&put));
    let mut expected = String::from_utf8(listed(Path::new(d))).unwrap();
    expected.push_str("extra\n");
    let mut lines: Vec<&str> = expected.lines().collect();
    lines.sort();
    let got = String::from_utf8(listed(&later)).unwrap();
    assert_eq!(got.lines().collect::<Vec<_>>(), lines);

    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, &std::fs::read(&file).unwrap()[..4096]).unwrap();
    let rejected = keel(&[
        "restore",
        "--data-dir",
        fresh.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code(&rejected), 1);
    assert!(
        text(&rejected).contains("nothing was changed"),
        "{}",
        text(&rejected)
    );
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

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            all_files(&entry.path(), out);
        } else {
            out.push(entry.path());
        }
    }
}

/// Flips random bytes in, or truncates, `file`; returns what was done.
fn damage(file: &Path, rng: &mut ChaCha8Rng) -> String {
    let mut bytes = std::fs::read(file).unwrap();
    if bytes.is_empty() || rng.gen_bool(0.3) {
        let at = rng.gen_range(0..=bytes.len());
        bytes.truncate(at);
        std::fs::write(file, &bytes).unwrap();
        return format!("truncated at {at}");
    }
    let flips = rng.gen_range(1..=8);
    let mut offsets = Vec::new();
    for _ in 0..flips {
        let at = rng.gen_range(0..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..8);
        offsets.push(at);
    }
    std::fs::write(file, &bytes).unwrap();
    format!("flipped bits at {offsets:?}")
}

fn assert_no_panic(output: &Output, context: &str) {
    let all = text(output);
    assert!(!all.contains("panicked"), "{context}: panic:\n{all}");
    assert!(
        matches!(code(output), 0..=2),
        "{context}: exit {}:\n{all}",
        code(output)
    );
    assert!(!all.trim().is_empty(), "{context}: no message at all");
}

// SQLite's "how to corrupt" list in spirit: damage any file, anywhere.
#[test]
fn random_damage_to_any_file_never_panics_and_repair_or_rollback_yields_a_working_store() {
    const TRIALS: usize = 60;
    let seed: u64 = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("fault test seed: {seed} (replay with KEEL_TEST_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    build(&template);
    // A report in reports/ and a clean close, so every kind of file exists.
    keel(&[
        "debug",
        "corrupt",
        "--data-dir",
        template.to_str().unwrap(),
        "--mode",
        "flip-bits",
        "--key",
        "many/k001",
        "--seed",
        "2",
    ]);
    keel(&["fsck", "--data-dir", template.to_str().unwrap(), "--repair"]);
    let mut first_exit = [0usize; 3];
    let mut rollbacks_after_refused_repair = 0;
    for trial in 0..TRIALS {
        let dir = base.path().join(format!("trial{trial}"));
        copy_dir(&template, &dir);
        let d = dir.to_str().unwrap();
        let mut files = Vec::new();
        all_files(&dir, &mut files);
        files.sort();
        let file = &files[rng.gen_range(0..files.len())];
        let what = damage(file, &mut rng);
        let context = format!(
            "seed {seed} trial {trial}: {} {what}",
            file.strip_prefix(&dir).unwrap().display()
        );

        let check = keel(&["fsck", "--data-dir", d]);
        assert_no_panic(&check, &context);
        first_exit[code(&check) as usize] += 1;
        let action = if rng.gen_bool(0.5) {
            "--repair"
        } else {
            "--rollback"
        };
        let fixed = keel(&["fsck", "--data-dir", d, action, "--yes"]);
        assert_no_panic(&fixed, &format!("{context}, {action}"));
        let mut listed = keel(&["kv", "ls", "--data-dir", d, "-r"]);
        if code(&listed) != 0 && action == "--repair" {
            // A repair refuses when the root directory is unreadable and
            // names the rollback; follow that advice.
            assert!(
                text(&fixed).contains("--rollback"),
                "{context}: {}",
                text(&fixed)
            );
            rollbacks_after_refused_repair += 1;
            let rolled = keel(&["fsck", "--data-dir", d, "--rollback", "--yes"]);
            assert_no_panic(&rolled, &format!("{context}, then --rollback"));
            listed = keel(&["kv", "ls", "--data-dir", d, "-r"]);
        }
        assert_eq!(
            code(&listed),
            0,
            "{context}: after {action}: {}\n{}",
            text(&fixed),
            text(&listed)
        );
        let again = keel(&["fsck", "--data-dir", d]);
        assert_eq!(
            code(&again),
            0,
            "{context}: after {action}: {}\n{}",
            text(&fixed),
            text(&again)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "{TRIALS} trials: first fsck exited 0/1/2 {first_exit:?} times; {rollbacks_after_refused_repair} refused repairs followed by a rollback"
    );
    assert!(first_exit[1] > 0, "some damage must be found");
}

#[test]
fn quiet_hides_warnings_but_never_errors() {
    use keel_store::object::{Branch, Child, Link, Name, Node, NodeCell};
    use keel_store::pack::{CommitRecord, PackBatch};
    use keel_store::tree;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let store = Store::init(dir.path(), StoreOptions::default()).unwrap();
    store
        .commit(&[Txn::put("a", noise(1, 3000)), Txn::put("b", "2")])
        .unwrap();
    let objects = store.objects();
    let leaf = store.snapshot().root().clone();
    let count = tree::dir_count(objects, &leaf).unwrap();
    // A root branch over a single child is not canonical: a warning.
    let wrapped = Link::Loaded(std::sync::Arc::new(NodeCell::new(Node::Branch(Branch {
        level: 1,
        children: vec![Child {
            last: Name::new("b"),
            count,
            link: leaf,
        }],
    }))));
    let mut batch = PackBatch::new();
    let root = tree::flush(objects, &wrapped, &mut batch).unwrap();
    let commit = CommitRecord {
        revision: store.revision() + 1,
        root,
        timestamp_ms: 1,
        meta: vec![],
    };
    objects.pack.write(batch, Some(&commit), true).unwrap();
    drop(store);

    let loud = keel(&["fsck", "--data-dir", d]);
    assert_eq!(code(&loud), 0, "warnings alone exit 0: {}", text(&loud));
    assert!(
        text(&loud).contains("warning: /: non-canonical directory"),
        "{}",
        text(&loud)
    );
    let quiet = keel(&["fsck", "--data-dir", d, "-q"]);
    assert!(!text(&quiet).contains("warning:"), "{}", text(&quiet));
    keel(&[
        "debug",
        "corrupt",
        "--data-dir",
        d,
        "--mode",
        "flip-bits",
        "--key",
        "a",
        "--seed",
        "1",
    ]);
    let quiet = keel(&["fsck", "--data-dir", d, "-q"]);
    assert_eq!(code(&quiet), 1);
    assert!(
        text(&quiet).contains("a: corrupt blob"),
        "errors are never hidden: {}",
        text(&quiet)
    );
    assert!(!text(&quiet).contains("warning:"), "{}", text(&quiet));
}
