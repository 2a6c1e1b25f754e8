//! fsck through its library: every kind of damage, every action, the exact
//! keys reported and moved, and the refusals.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{build, error_paths, files, fsck, options, read_all, Answer, State};
use keel_fsck::check::{self, Choice, Requested};
use keel_fsck::corrupt::{corrupt, CorruptReport, Mode};
use keel_fsck::report::ActionTaken;
use keel_fsck::startup::{open_for_writing, StartupPolicy};
use keel_fsck::{FindingKind, FsckError, ObjectRole};

/// One way to damage the fixture and what must come of it.
struct Case {
    mode: Mode,
    key: &'static str,
    /// Keys moved to lost+found by a repair.
    moved: &'static [&'static str],
    /// Directories unlinked by a repair.
    unlinked: &'static [&'static str],
    /// Directories rebuilt with some entries lost.
    partly_lost: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        mode: Mode::DeleteBlob,
        key: "apps/web/cfg",
        moved: &["apps/web/cfg"],
        unlinked: &[],
        partly_lost: &[],
    },
    Case {
        mode: Mode::FlipBits,
        key: "apps/web/logo",
        moved: &["apps/web/logo"],
        unlinked: &[],
        partly_lost: &[],
    },
    Case {
        mode: Mode::DeleteDir,
        key: "apps/web",
        moved: &[],
        unlinked: &["apps/web"],
        partly_lost: &[],
    },
    Case {
        mode: Mode::DamageDir,
        key: "apps/db",
        moved: &[],
        unlinked: &["apps/db"],
        partly_lost: &[],
    },
    Case {
        mode: Mode::DeleteDirNode,
        key: "many",
        moved: &[],
        unlinked: &[],
        partly_lost: &["many"],
    },
];

fn damaged(case: &Case) -> (tempfile::TempDir, State, State, CorruptReport) {
    let dir = tempfile::tempdir().unwrap();
    let (previous, current) = build(dir.path());
    let report = corrupt(dir.path(), case.mode, Some(case.key), 1, 7).unwrap();
    assert_eq!(report.blobs, 1, "{:?}", case.mode);
    (dir, previous, current, report)
}

/// Keys of `state` that the damage of `case` does not touch.
fn untouched(state: &State, case: &Case, lost: &BTreeSet<String>) -> State {
    state
        .iter()
        .filter(|(key, _)| !case.moved.contains(&key.as_str()))
        .filter(|(key, _)| {
            !case
                .unlinked
                .iter()
                .any(|d| key.starts_with(&format!("{d}/")))
        })
        .filter(|(key, _)| !lost.contains(*key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Garbage collection runs after a repair or rollback: checkpoints whose
/// trees it could not walk were dropped.
fn gc_works(dir: &Path, case: &Case) {
    let store = keel_store::Store::open(dir, Default::default()).unwrap();
    store
        .gc(true)
        .unwrap_or_else(|e| panic!("{:?}: gc after the fix: {e}", case.mode));
    store.close().unwrap();
    assert_eq!(
        fsck(dir, Requested::ReportOnly).errors,
        0,
        "{:?}: clean after gc",
        case.mode
    );
}

#[test]
fn every_damage_kind_is_reported_at_exactly_the_damaged_key() {
    for case in CASES {
        let (dir, _, _, damage) = damaged(case);
        let before = files(dir.path());
        let report = fsck(dir.path(), Requested::ReportOnly);
        let expected: Vec<String> = damage.damaged.iter().map(|d| d.path.clone()).collect();
        assert_eq!(error_paths(&report), expected, "{:?}", case.mode);
        assert_eq!(expected, vec![case.key.to_string()], "{:?}", case.mode);
        for d in &damage.damaged {
            assert!(
                report
                    .findings
                    .iter()
                    .any(|f| f.path == d.path && f.blob == Some(d.blob) && f.kind == d.expect),
                "{:?}: no {:?} finding for {} {}: {:#?}",
                case.mode,
                d.expect,
                d.path,
                d.blob,
                report.findings
            );
        }
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.action, ActionTaken::None);
        assert!(
            report.report_file.as_ref().is_some_and(|p| p.exists()),
            "a report is written"
        );
        assert_eq!(
            files(dir.path()),
            before,
            "{:?}: a report-only fsck changes nothing",
            case.mode
        );
    }
}

#[test]
fn repair_moves_exactly_the_damaged_keys_and_a_second_fsck_is_clean() {
    for case in CASES {
        let (dir, _, current, _) = damaged(case);
        let report = fsck(dir.path(), Requested::Repair);
        assert_eq!(
            report.action,
            ActionTaken::Repaired,
            "{:?}: {:?}",
            case.mode,
            report.action_detail
        );
        assert_eq!(
            report.exit_code(),
            1,
            "problems found, even though repaired"
        );
        let repair = report.repair.as_ref().unwrap();
        let moved: Vec<&str> = repair.moved.iter().map(|m| m.from.as_str()).collect();
        assert_eq!(moved, case.moved, "{:?}", case.mode);
        let unlinked: Vec<&str> = repair
            .unlinked_directories
            .keys()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(unlinked, case.unlinked, "{:?}", case.mode);
        let partly: Vec<&str> = repair
            .partly_lost_directories
            .keys()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(partly, case.partly_lost, "{:?}", case.mode);

        let second = fsck(dir.path(), Requested::ReportOnly);
        assert_eq!(second.errors, 0, "{:?}: {:#?}", case.mode, second.findings);
        assert_eq!(second.exit_code(), 0);
        gc_works(dir.path(), case);

        let after = read_all(dir.path());
        let lost: BTreeSet<String> = current
            .keys()
            .filter(|k| !after.contains_key(*k))
            .cloned()
            .collect();
        let partly_lost: u64 = repair.partly_lost_directories.values().sum();
        let under_unlinked = current
            .keys()
            .filter(|k| {
                case.unlinked
                    .iter()
                    .any(|d| k.starts_with(&format!("{d}/")))
            })
            .count();
        assert_eq!(
            lost.len(),
            case.moved.len() + under_unlinked + partly_lost as usize,
            "{:?}: exactly the damaged keys are gone",
            case.mode
        );
        for key in &lost {
            let explained = case.moved.contains(&key.as_str())
                || case
                    .unlinked
                    .iter()
                    .chain(case.partly_lost)
                    .any(|d| key.starts_with(&format!("{d}/")));
            assert!(explained, "{:?}: {key} was lost without damage", case.mode);
        }
        for (key, value) in untouched(&current, case, &lost) {
            assert_eq!(
                after.get(&key),
                Some(&value),
                "{:?}: {key} must keep its value",
                case.mode
            );
        }
        let found: Vec<&str> = after
            .keys()
            .filter_map(|k| k.strip_prefix("lost+found/"))
            .collect();
        assert_eq!(
            found, case.moved,
            "{:?}: lost+found holds exactly the damaged keys",
            case.mode
        );
        for moved in &repair.moved {
            assert_eq!(after[&moved.to].len() as u64, moved.kept_bytes);
            assert!(moved.kept_bytes < moved.original_bytes);
        }
    }
}

#[test]
fn rollback_returns_to_the_newest_clean_checkpoint_or_repairs_the_newest_readable() {
    for case in CASES {
        let (dir, previous, _, _) = damaged(case);
        // Checkpoint 1 is the empty store of `init`, 2 the first commit, 3 the newest.
        let state_at = |sequence: u64| {
            if sequence == 1 {
                State::new()
            } else {
                previous.clone()
            }
        };
        let revision_before = keel_store::Store::open_read_only(dir.path())
            .unwrap()
            .revision();
        let report = fsck(dir.path(), Requested::Rollback);
        assert_eq!(
            report.action,
            ActionTaken::RolledBack,
            "{:?}: {:?}",
            case.mode,
            report.action_detail
        );
        let rollback = report.rollback.as_ref().unwrap();
        assert!(
            rollback.checkpoint.revision > revision_before,
            "revisions keep increasing"
        );
        let second = fsck(dir.path(), Requested::ReportOnly);
        assert_eq!(second.errors, 0, "{:?}: {:#?}", case.mode, second.findings);
        gc_works(dir.path(), case);
        let after = read_all(dir.path());
        if rollback.plan.clean {
            let sequence = rollback.plan.checkpoint.sequence;
            assert_eq!(
                after,
                state_at(sequence),
                "{:?}: checkpoint {sequence}'s state is back",
                case.mode
            );
            assert!(rollback.repair.is_none());
        } else {
            // The damaged object is shared with every checkpoint: the newest
            // readable one was repaired instead.
            assert!(rollback.repair.is_some(), "{:?}", case.mode);
            for (key, value) in &after {
                if !key.starts_with("lost+found/") {
                    assert_eq!(previous.get(key), Some(value), "{:?}: {key}", case.mode);
                }
            }
        }
        let changed = rollback.plan.diff.changed_count
            + rollback.plan.diff.dropped_count
            + rollback.plan.diff.restored_count;
        assert!(
            changed > 0,
            "{:?}: the plan names the keys that differ",
            case.mode
        );
    }
}

#[test]
fn interactive_choices_save_roll_back_or_change_nothing() {
    let case = &CASES[0];
    let (dir, previous, _, _) = damaged(case);
    let before = files(dir.path());
    let quit = check::run(
        &options(dir.path(), Requested::Ask),
        &mut Answer(Choice::Quit),
    )
    .unwrap();
    assert_eq!(quit.action, ActionTaken::Declined);
    assert!(
        quit.rollback_offered.is_some(),
        "the question offers a rollback"
    );
    assert_eq!(files(dir.path()), before, "quit changes nothing");
    let rollback = check::run(
        &options(dir.path(), Requested::Ask),
        &mut Answer(Choice::Rollback),
    )
    .unwrap();
    assert_eq!(rollback.action, ActionTaken::RolledBack);
    assert_eq!(read_all(dir.path()), previous);

    let (dir, _, _, _) = damaged(case);
    let save = check::run(
        &options(dir.path(), Requested::Ask),
        &mut Answer(Choice::Repair),
    )
    .unwrap();
    assert_eq!(save.action, ActionTaken::Repaired);
    assert_eq!(save.repair.unwrap().moved[0].to, "lost+found/apps/web/cfg");
}

#[test]
fn answers_are_read_with_save_as_the_default() {
    assert_eq!(check::parse_choice("\n"), Some(Choice::Repair));
    assert_eq!(check::parse_choice("S"), Some(Choice::Repair));
    assert_eq!(check::parse_choice("r"), Some(Choice::Rollback));
    assert_eq!(check::parse_choice("q\n"), Some(Choice::Quit));
    assert_eq!(check::parse_choice("maybe"), None);
    let plan = keel_fsck::repair::RepairPlan::default();
    let prompt = check::Prompt {
        findings: &[],
        plan: &plan,
        repair_refusal: None,
        rollback: Err("none".into()),
    };
    let mut out = Vec::new();
    let choice = check::ask_until_answered(&mut &b"what\nr\n"[..], &mut out, &prompt);
    assert_eq!(choice, Choice::Rollback);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("s=save (repair), r=rollback, q=quit without saving [S/r/q]?"),
        "{text}"
    );
    assert!(text.contains("please answer"), "{text}");
    assert_eq!(
        check::ask_until_answered(&mut &b""[..], &mut Vec::new(), &prompt),
        Choice::Quit,
        "end of input quits"
    );
}

#[test]
fn damage_under_a_critical_prefix_is_never_moved_to_lost_found() {
    let (dir, _, _, _) = damaged(&CASES[0]);
    std::fs::write(
        dir.path().join("config.toml"),
        "critical_prefixes = [\"apps/web\"]\n",
    )
    .unwrap();
    let before = files(dir.path());
    let report = fsck(dir.path(), Requested::Repair);
    assert_eq!(report.action, ActionTaken::Refused);
    assert_eq!(report.critical_paths, vec!["apps/web/cfg".to_string()]);
    let detail = report.action_detail.unwrap();
    assert!(
        detail.contains("--rollback") && detail.contains("keel restore"),
        "{detail}"
    );
    assert_eq!(files(dir.path()), before, "nothing changed");
    // The same from the command-line option alone.
    std::fs::remove_file(dir.path().join("config.toml")).unwrap();
    let mut opts = options(dir.path(), Requested::Repair);
    opts.critical = vec!["apps".into()];
    let report = check::run(&opts, &mut Answer(Choice::Repair)).unwrap();
    assert_eq!(report.action, ActionTaken::Refused);
}

#[test]
fn damage_over_the_limit_aborts_with_no_side_effect() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let damage = corrupt(dir.path(), Mode::DeleteBlob, None, 3, 11).unwrap();
    let before = files(dir.path());
    let mut opts = options(dir.path(), Requested::Repair);
    opts.max_damage = damage.damaged.len() as u64 - 1;
    let report = check::run(&opts, &mut Answer(Choice::Repair)).unwrap();
    assert_eq!(report.action, ActionTaken::Refused);
    assert!(report
        .action_detail
        .as_deref()
        .unwrap()
        .contains("--max-damage"));
    assert_eq!(files(dir.path()), before, "store bytes unchanged");
    assert!(
        dir.path().join("DIRTY").exists(),
        "known damage left in place keeps the store marked for the start-up check"
    );
    opts.max_damage = damage.damaged.len() as u64;
    assert_eq!(
        check::run(&opts, &mut Answer(Choice::Repair))
            .unwrap()
            .action,
        ActionTaken::Repaired
    );
}

#[test]
fn a_name_taken_in_lost_found_gets_a_suffix() {
    let (dir, _, _, _) = damaged(&CASES[0]);
    assert_eq!(
        fsck(dir.path(), Requested::Repair).action,
        ActionTaken::Repaired
    );
    let store = keel_store::Store::open(dir.path(), Default::default()).unwrap();
    store
        .commit(&[keel_store::Txn::put("apps/web/cfg", common::noise(9, 5000))])
        .unwrap();
    store.checkpoint().unwrap();
    store.close().unwrap();
    corrupt(dir.path(), Mode::FlipBits, Some("apps/web/cfg"), 1, 3).unwrap();
    let report = fsck(dir.path(), Requested::Repair);
    assert_eq!(
        report.repair.unwrap().moved[0].to,
        "lost+found/apps/web/cfg.1"
    );
    assert_eq!(fsck(dir.path(), Requested::ReportOnly).errors, 0);
}

#[test]
fn a_damaged_identity_is_restored_by_repair_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_, current) = build(dir.path());
    let id = keel_store::datadir::read_identity(dir.path()).unwrap();
    std::fs::write(dir.path().join("IDENTITY"), b"{\"format\": \"keel-st").unwrap();
    let report = fsck(dir.path(), Requested::ReportOnly);
    assert_eq!(report.errors, 1);
    assert!(
        report.findings[0].detail.contains("--repair"),
        "{:?}",
        report.findings
    );
    assert!(
        keel_store::Store::open_read_only(dir.path()).is_err(),
        "still damaged"
    );
    let report = fsck(dir.path(), Requested::Repair);
    assert!(report.identity_restored);
    assert_eq!(
        keel_store::datadir::read_identity(dir.path()).unwrap(),
        id,
        "store id kept"
    );
    assert_eq!(read_all(dir.path()), current);
    assert_eq!(fsck(dir.path(), Requested::ReportOnly).exit_code(), 0);
}

#[test]
fn read_only_fsck_works_while_the_store_is_held_and_repair_is_refused() {
    let (dir, _, _, _) = damaged(&CASES[0]);
    let held = keel_store::Store::open(dir.path(), Default::default()).unwrap();
    let report = fsck(dir.path(), Requested::ReportOnly);
    assert_eq!(error_paths(&report), vec!["apps/web/cfg".to_string()]);
    let refused = check::run(
        &options(dir.path(), Requested::Repair),
        &mut Answer(Choice::Repair),
    )
    .unwrap_err();
    assert!(refused.is_cannot_start(), "{refused}");
    let asked = check::run(
        &options(dir.path(), Requested::Ask),
        &mut Answer(Choice::Repair),
    )
    .unwrap();
    assert_eq!(asked.action, ActionTaken::None, "in use: reporting only");
    drop(held);
}

fn mark_unclean(dir: &Path) {
    std::fs::write(dir.join("DIRTY"), b"pid 1\n").unwrap();
}

#[test]
fn start_up_check_repairs_small_damage_and_refuses_large_damage() {
    // Small damage after an unclean shutdown: repaired, reported, served.
    let (dir, _, _, _) = damaged(&CASES[0]);
    mark_unclean(dir.path());
    let (store, startup) = open_for_writing(dir.path(), &StartupPolicy::default()).unwrap();
    assert!(startup.checked);
    assert_eq!(startup.repaired_keys, 1);
    assert!(startup.report_file.as_ref().unwrap().exists());
    assert!(store
        .snapshot()
        .get("lost+found/apps/web/cfg")
        .unwrap()
        .is_some());
    store.close().unwrap();
    assert_eq!(fsck(dir.path(), Requested::ReportOnly).errors, 0);

    // A clean close is served without a check (fsck finds bit rot later).
    let (dir, _, _, _) = damaged(&CASES[0]);
    let (_, startup) = open_for_writing(dir.path(), &StartupPolicy::default()).unwrap();
    assert!(!startup.checked);

    // Large damage: refused, with the exact command to run; nothing changed.
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    corrupt(dir.path(), Mode::DeleteBlob, None, 12, 5).unwrap();
    mark_unclean(dir.path());
    let before = files(dir.path());
    let error = open_for_writing(dir.path(), &StartupPolicy::default()).unwrap_err();
    assert!(matches!(error, FsckError::StartRefused { .. }));
    assert!(error.is_cannot_start());
    let message = error.to_string();
    let command = format!("keel fsck --data-dir {} --repair", dir.path().display());
    assert!(message.contains(&command), "{message}");
    assert_eq!(files(dir.path()), before);

    // Damage under a critical prefix: refused even when small.
    let (dir, _, _, _) = damaged(&CASES[0]);
    mark_unclean(dir.path());
    let policy = StartupPolicy {
        critical: vec!["apps".into()],
        ..StartupPolicy::default()
    };
    let message = open_for_writing(dir.path(), &policy)
        .unwrap_err()
        .to_string();
    assert!(message.contains("--rollback"), "{message}");
}

#[test]
fn wrong_types_undecodable_objects_and_structure_errors_are_found_and_repaired() {
    use keel_store::object::{encode_chunk_list, ChunkList, Entry, EntryValue, Link, Name};
    use keel_store::pack::{CommitRecord, PackBatch};
    use keel_store::{tree, Hash, Store};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path(), Default::default()).unwrap();
    store
        .commit(&[
            keel_store::Txn::put("ok/a", "1"),
            keel_store::Txn::put("ok/b", "2"),
        ])
        .unwrap();
    let objects = store.objects();
    let ok_dir = store.get("ok").unwrap().unwrap();
    let chunk = common::noise(5, 3000);
    let list = encode_chunk_list(&ChunkList {
        level: 0,
        entries: vec![(Hash::of(&chunk), 3000)],
    });
    let garbage = b"\x01\x01not a directory node".to_vec();
    let mut batch = PackBatch::new();
    for blob in [&chunk, &list, &garbage] {
        batch.add_blob(Hash::of(blob), blob);
    }
    let EntryValue::Dir { root: ok_root, .. } = ok_dir.value else {
        panic!("ok is a directory")
    };
    let entry = |name: &str, value| Entry {
        name: Name::new(name),
        revision: 1,
        value,
    };
    let entries = vec![
        entry(
            "chunks-as-dir",
            EntryValue::Dir {
                root: Link::Stored(Hash::of(&list)),
                count: 1,
            },
        ),
        entry(
            "counted",
            EntryValue::Dir {
                root: ok_root,
                count: 5,
            },
        ),
        entry(
            "dir-as-chunks",
            EntryValue::Chunked {
                list: ok_dir_hash(&store),
                size: 10,
            },
        ),
        entry(
            "junk",
            EntryValue::Dir {
                root: Link::Stored(Hash::of(&garbage)),
                count: 1,
            },
        ),
        entry(
            "sized",
            EntryValue::Blob {
                hash: Hash::of(&chunk),
                size: 10,
            },
        ),
    ];
    let root = tree::build_dir(objects, entries).unwrap();
    let hash = tree::flush(objects, &root, &mut batch).unwrap();
    let commit = CommitRecord {
        revision: store.revision() + 1,
        root: hash,
        timestamp_ms: 1,
        meta: vec![],
    };
    objects.pack.write(batch, Some(&commit), true).unwrap();
    // Dropped, not closed: closing would commit the writer's own root again.
    drop(store);

    let report = fsck(dir.path(), Requested::ReportOnly);
    let kinds: Vec<(String, FindingKind, ObjectRole)> = report
        .findings
        .iter()
        .filter(|f| f.is_error())
        .map(|f| (f.path.clone(), f.kind, f.role))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (
                "chunks-as-dir".into(),
                FindingKind::WrongType,
                ObjectRole::DirectoryRoot
            ),
            (
                "counted".into(),
                FindingKind::Structure,
                ObjectRole::Directory
            ),
            (
                "dir-as-chunks".into(),
                FindingKind::WrongType,
                ObjectRole::ChunkList
            ),
            (
                "junk".into(),
                FindingKind::UndecodableDirectory,
                ObjectRole::DirectoryRoot
            ),
            ("sized".into(), FindingKind::Structure, ObjectRole::Value),
        ],
        "{:#?}",
        report.findings
    );
    let report = fsck(dir.path(), Requested::Repair);
    let repair = report.repair.unwrap();
    let moved: Vec<&str> = repair.moved.iter().map(|m| m.from.as_str()).collect();
    assert_eq!(moved, ["dir-as-chunks", "sized"]);
    let unlinked: Vec<&str> = repair
        .unlinked_directories
        .keys()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(unlinked, ["chunks-as-dir", "junk"]);
    assert!(repair.rebuilt_directories.contains("counted"));
    assert_eq!(
        fsck(dir.path(), Requested::ReportOnly).findings,
        vec![],
        "clean, no warnings"
    );
    let after = read_all(dir.path());
    assert_eq!(after["counted/a"], b"1");
    assert_eq!(
        after["lost+found/sized"], chunk,
        "the surviving chunk is kept"
    );
}

fn ok_dir_hash(store: &keel_store::Store) -> keel_store::Hash {
    match store.get("ok").unwrap().unwrap().value {
        keel_store::EntryValue::Dir { root, .. } => root.known_hash().unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn a_non_canonical_directory_is_a_warning_that_repair_rebuilds() {
    use keel_store::object::{Branch, Child, Link, Node, NodeCell};
    use keel_store::pack::{CommitRecord, PackBatch};
    use keel_store::{tree, Store};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path(), Default::default()).unwrap();
    store
        .commit(&[
            keel_store::Txn::put("a", "1"),
            keel_store::Txn::put("b", "2"),
        ])
        .unwrap();
    let objects = store.objects();
    let leaf = store.snapshot().root().clone();
    let count = tree::dir_count(objects, &leaf).unwrap();
    let last = keel_store::object::Name::new("b");
    // A branch over a single child: the canonical root is the child itself.
    let wrapped = Link::Loaded(std::sync::Arc::new(NodeCell::new(Node::Branch(Branch {
        level: 1,
        children: vec![Child {
            last,
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

    let report = fsck(dir.path(), Requested::ReportOnly);
    assert_eq!(report.errors, 0);
    assert_eq!(report.warnings, 1, "{:#?}", report.findings);
    assert_eq!(report.findings[0].kind, FindingKind::NonCanonical);
    assert_eq!(report.findings[0].path, "/");
    assert!(report.findings[0]
        .line()
        .starts_with("warning: /: non-canonical directory"));
    assert_eq!(report.exit_code(), 0, "warnings alone are not problems");
    let repaired = fsck(dir.path(), Requested::Repair);
    assert_eq!(repaired.action, ActionTaken::Repaired);
    assert_eq!(fsck(dir.path(), Requested::ReportOnly).findings, vec![]);
    assert_eq!(read_all(dir.path()).len(), 2);
}
