//! Dumps and restores: round trips, damaged archives, damaged stores, and
//! the restore-at-start marker (flux-core's RESTORE link).

mod common;

use std::path::Path;

use common::{build, files, fsck, noise, read_all};
use keel_fsck::check::{resolve_target, Requested, TargetChoice};
use keel_fsck::corrupt::{corrupt, Mode};
use keel_fsck::dump::{self, Source};
use keel_fsck::startup::{open_for_writing, StartupPolicy};
use keel_fsck::FsckError;
use keel_store::{Store, StoreOptions, Txn};

fn dump_current(
    dir: &Path,
    file: &Path,
    ignore_failed_read: bool,
) -> Result<dump::Manifest, FsckError> {
    let options = dump::DumpOptions {
        ignore_failed_read,
        prefixes: Vec::new(),
    };
    dump_with(dir, file, &options)
}

fn dump_with(
    dir: &Path,
    file: &Path,
    options: &dump::DumpOptions,
) -> Result<dump::Manifest, FsckError> {
    let store = Store::open_read_only(dir).unwrap();
    let target = resolve_target(&store, &TargetChoice::Head).unwrap();
    let source = Source {
        revision: target.revision,
        checkpoint: target.checkpoint,
        root: target.root,
    };
    dump::dump(&store, source, file, options)
}

fn restore(dir: &Path, file: &Path) -> Result<dump::RestoreOutcome, FsckError> {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let result = dump::restore(&store, file);
    store.close().unwrap();
    result
}

#[test]
fn a_dump_restores_into_an_existing_store_with_higher_revisions() {
    let source = tempfile::tempdir().unwrap();
    let (_, mut state) = build(source.path());
    // A multi-MiB value, streamed in (never whole in memory on the way out).
    let big = noise(77, 6 * 1024 * 1024 + 123);
    let store = Store::open(source.path(), StoreOptions::default()).unwrap();
    store.commit(&[Txn::put("blobs/big", big.clone())]).unwrap();
    store.checkpoint().unwrap();
    store.close().unwrap();
    state.insert("blobs/big".into(), big);
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("store.tar");
    let manifest = dump_current(source.path(), &file, false).unwrap();
    assert_eq!(manifest.keys.len(), state.len());
    assert!(manifest.skipped.is_empty());
    assert!(!archive.path().join("store.tar.partial").exists());

    let target = tempfile::tempdir().unwrap();
    let store = Store::init(target.path(), StoreOptions::default()).unwrap();
    for i in 0..30 {
        store.commit(&[Txn::put(format!("old/k{i}"), "x")]).unwrap();
    }
    store.checkpoint().unwrap();
    let highest = store.revision();
    store.close().unwrap();
    let outcome = restore(target.path(), &file).unwrap();
    assert!(
        outcome.checkpoint.revision > highest,
        "revisions keep increasing after a restore"
    );
    assert_eq!(
        read_all(target.path()),
        state,
        "the dump's contents replace the store's"
    );
    let report = fsck(target.path(), Requested::ReportOnly);
    assert_eq!(report.exit_code(), 0, "{:#?}", report.findings);
    let restored = Store::open_read_only(target.path()).unwrap();
    let entry = restored.get("apps/web/cfg").unwrap().unwrap();
    assert_eq!(
        entry.revision, outcome.checkpoint.revision,
        "restored entries carry the new revision"
    );
}

/// Offset of the first byte of `key`'s value inside a tar file.
fn value_offset(file: &Path, key: &str) -> u64 {
    let mut archive = tar::Archive::new(std::fs::File::open(file).unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path_bytes().as_ref() == format!("values/{key}").as_bytes() {
            return entry.raw_file_position();
        }
    }
    panic!("{key} not in the archive");
}

#[test]
fn tampered_and_truncated_archives_are_rejected_with_no_change() {
    let source = tempfile::tempdir().unwrap();
    build(source.path());
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("store.tar");
    dump_current(source.path(), &file, false).unwrap();
    let bytes = std::fs::read(&file).unwrap();

    let target = tempfile::tempdir().unwrap();
    build(target.path());
    let before = files(target.path());
    let mut tampered = bytes.clone();
    tampered[value_offset(&file, "apps/web/logo") as usize + 5000] ^= 0x40;
    let mut manifest_tampered = bytes.clone();
    let at = value_offset(&file, "top") as usize; // same length, different bytes
    manifest_tampered[at] ^= 0x01;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("value bytes changed", tampered),
        ("a value changed", manifest_tampered),
        ("truncated in the values", bytes[..bytes.len() / 2].to_vec()),
        (
            "truncated before the integrity entry",
            bytes[..bytes.len() - 2048].to_vec(),
        ),
        ("empty", Vec::new()),
        ("not a tar", b"hello, world".repeat(100)),
    ];
    for (what, damaged) in cases {
        let bad = archive.path().join("bad.tar");
        std::fs::write(&bad, damaged).unwrap();
        let error = restore(target.path(), &bad).unwrap_err();
        assert!(
            matches!(error, FsckError::BadArchive { .. }),
            "{what}: {error}"
        );
        assert!(
            error.to_string().contains("nothing was changed"),
            "{what}: {error}"
        );
        assert_eq!(files(target.path()), before, "{what}: nothing changed");
    }
}

#[test]
fn ignore_failed_read_dumps_what_a_damaged_store_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_, state) = build(dir.path());
    corrupt(dir.path(), Mode::FlipBits, Some("apps/web/cfg"), 1, 1).unwrap();
    corrupt(dir.path(), Mode::DeleteDir, Some("apps/db"), 1, 1).unwrap();
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("store.tar");
    let error = dump_current(dir.path(), &file, false).unwrap_err();
    assert!(
        error.to_string().contains("--ignore-failed-read"),
        "{error}"
    );
    assert!(!file.exists(), "a failed dump leaves no archive");
    let manifest = dump_current(dir.path(), &file, true).unwrap();
    let skipped: Vec<&str> = manifest.skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(skipped, ["apps/db", "apps/web/cfg"]);
    let target = tempfile::tempdir().unwrap();
    Store::init(target.path(), StoreOptions::default())
        .unwrap()
        .close()
        .unwrap();
    restore(target.path(), &file).unwrap();
    let mut expected = state.clone();
    expected.retain(|k, _| k != "apps/web/cfg" && !k.starts_with("apps/db/"));
    assert_eq!(read_all(target.path()), expected);
}

#[test]
fn a_restore_marker_is_honoured_once_at_start() {
    let source = tempfile::tempdir().unwrap();
    let (_, state) = build(source.path());
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("good.tar");
    dump_current(source.path(), &file, false).unwrap();

    let target = tempfile::tempdir().unwrap();
    let store = Store::init(target.path(), StoreOptions::default()).unwrap();
    store.commit(&[Txn::put("before", "restore")]).unwrap();
    store.close().unwrap();
    dump::request_restore(target.path(), &file).unwrap();
    let (store, startup) = open_for_writing(target.path(), &StartupPolicy::default()).unwrap();
    assert_eq!(
        startup.restored_from.as_deref(),
        Some(std::fs::canonicalize(&file).unwrap().as_path())
    );
    store.commit(&[Txn::put("after", "restore")]).unwrap();
    store.close().unwrap();
    let mut expected = state.clone();
    expected.insert("after".into(), b"restore".to_vec());
    assert_eq!(read_all(target.path()), expected);
    assert!(
        !target.path().join("dump/RESTORE").exists(),
        "the marker is renamed"
    );
    let done = std::fs::read_dir(target.path().join("dump"))
        .unwrap()
        .count();
    assert_eq!(done, 1, "RESTORE.done-<time> remains");
    let (store, startup) = open_for_writing(target.path(), &StartupPolicy::default()).unwrap();
    assert!(
        startup.restored_from.is_none(),
        "a second start does not restore again"
    );
    drop(store);

    // A marker that is a file holding a relative path works too.
    std::fs::copy(&file, target.path().join("dump/copy.tar")).unwrap();
    std::fs::write(target.path().join("dump/RESTORE"), "copy.tar\n").unwrap();
    let (_, startup) = open_for_writing(target.path(), &StartupPolicy::default()).unwrap();
    assert_eq!(
        startup.restored_from,
        Some(target.path().join("dump/copy.tar"))
    );
    assert_eq!(read_all(target.path()), state);
}

#[test]
fn a_dump_can_hold_only_the_keys_that_matter_most() {
    // flux-core: with no known good dump, make one of the critical keys only.
    let dir = tempfile::tempdir().unwrap();
    let (_, state) = build(dir.path());
    corrupt(dir.path(), Mode::DeleteBlob, Some("many/k003"), 1, 1).unwrap();
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("critical.tar");
    let options = dump::DumpOptions {
        ignore_failed_read: false,
        prefixes: vec!["apps/web".into(), "top".into()],
    };
    let manifest = dump_with(dir.path(), &file, &options).unwrap();
    let keys: Vec<&str> = manifest.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        keys,
        ["apps/web/cfg", "apps/web/logo", "top"],
        "damage elsewhere does not matter"
    );
    let target = tempfile::tempdir().unwrap();
    Store::init(target.path(), StoreOptions::default())
        .unwrap()
        .close()
        .unwrap();
    restore(target.path(), &file).unwrap();
    let mut expected = state.clone();
    expected.retain(|k, _| k.starts_with("apps/web/") || k == "top");
    assert_eq!(read_all(target.path()), expected);
}
