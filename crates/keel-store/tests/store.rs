//! Behaviour of the store through its public API.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{new_store, noise, small_options, NoiseReader};
use keel_store::{
    Durability, EntryValue, ItemKind, Op, Retention, SpaceLimit, Store, StoreError, StoreOptions,
    Txn, TxnOutcome,
};

fn put(store: &Store, key: &str, value: &[u8]) -> TxnOutcome {
    store
        .commit(&[Txn::put(key, value.to_vec())])
        .unwrap()
        .remove(0)
}

#[test]
fn put_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    assert_eq!(store.revision(), 0);
    assert!(matches!(
        put(&store, "apps/web/cfg", b"port=80"),
        TxnOutcome::Applied {
            revision: 1,
            changed: true,
            ..
        }
    ));
    put(&store, "apps/db/cfg", b"size=1");
    put(&store, "top", b"level");
    assert_eq!(
        store.snapshot().get_value("apps/web/cfg").unwrap().unwrap(),
        "port=80"
    );
    assert_eq!(store.snapshot().get_value("missing").unwrap(), None);

    let root = store.snapshot().list("", false).unwrap();
    assert_eq!(
        root.iter()
            .map(|i| (i.key.as_str(), i.kind))
            .collect::<Vec<_>>(),
        vec![("apps", ItemKind::Dir), ("top", ItemKind::Value)]
    );
    let all = store.snapshot().list("apps", true).unwrap();
    assert_eq!(
        all.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        vec!["apps/db/cfg", "apps/web/cfg"]
    );

    // Paths through values, and values over directories, are refused.
    let outcome = put(&store, "top/child", b"x");
    assert!(
        matches!(&outcome, TxnOutcome::Rejected { reason } if reason.contains("not a directory")),
        "{outcome:?}"
    );
    let outcome = put(&store, "apps", b"x");
    assert!(
        matches!(&outcome, TxnOutcome::Rejected { reason } if reason.contains("is a directory")),
        "{outcome:?}"
    );
    let outcome = store.commit(&[Txn::delete("apps")]).unwrap().remove(0);
    assert!(matches!(outcome, TxnOutcome::Rejected { .. }));

    // Deleting the last key of a directory removes the directory.
    store.commit(&[Txn::delete("apps/db/cfg")]).unwrap();
    assert_eq!(store.snapshot().list("apps", false).unwrap().len(), 1);
    let outcome = store
        .commit(&[Txn::delete_prefix("apps")])
        .unwrap()
        .remove(0);
    assert!(matches!(outcome, TxnOutcome::Applied { deleted: 1, .. }));
    assert_eq!(store.snapshot().list("", true).unwrap().len(), 1);
    // Deleting something absent changes nothing and uses no revision.
    let before = store.revision();
    let outcome = store.commit(&[Txn::delete("nope")]).unwrap().remove(0);
    assert!(matches!(
        outcome,
        TxnOutcome::Applied { changed: false, .. }
    ));
    assert_eq!(store.revision(), before);
}

#[test]
fn transactions_are_atomic_and_compare_on_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    put(&store, "a", b"1");
    let rev_a = store.get("a").unwrap().unwrap().revision;
    // A failing comparison applies nothing.
    let txn = Txn {
        compare: vec![keel_store::Compare {
            key: "a".into(),
            mod_revision: rev_a + 5,
        }],
        ops: vec![Op::Put {
            key: "b".into(),
            value: Bytes::from_static(b"2"),
        }],
    };
    let outcome = store.commit(&[txn]).unwrap().remove(0);
    assert_eq!(
        outcome,
        TxnOutcome::CompareFailed {
            key: "a".into(),
            expected: rev_a + 5,
            actual: rev_a
        }
    );
    assert!(store.get("b").unwrap().is_none());
    // A rejected op in the middle undoes the earlier ops of its transaction.
    let txn = Txn {
        compare: vec![],
        ops: vec![
            Op::Put {
                key: "b".into(),
                value: Bytes::from_static(b"2"),
            },
            Op::Put {
                key: "a/under-a-value".into(),
                value: Bytes::from_static(b"x"),
            },
        ],
    };
    assert!(matches!(
        store.commit(&[txn]).unwrap()[0],
        TxnOutcome::Rejected { .. }
    ));
    assert!(store.get("b").unwrap().is_none());
    // Create-if-absent (revision 0) and compare-and-set.
    assert!(store.commit(&[Txn::put("c", "new").when("c", 0)]).unwrap()[0].is_applied());
    assert!(!store
        .commit(&[Txn::put("c", "again").when("c", 0)])
        .unwrap()[0]
        .is_applied());
    let rev_c = store.get("c").unwrap().unwrap().revision;
    assert!(store
        .commit(&[Txn::put("c", "swapped").when("c", rev_c)])
        .unwrap()[0]
        .is_applied());
    assert_eq!(store.snapshot().get_value("c").unwrap().unwrap(), "swapped");
}

#[test]
fn shape_is_canonical_whatever_the_order() {
    // Same keys, same revision stamps, different order of writes: same root.
    let keys: Vec<String> = (0..3000).map(|i| format!("big/k{i:05}")).collect();
    let build = |order: &mut dyn Iterator<Item = &String>, deletes: &[String]| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), StoreOptions::default()).unwrap();
        // One transaction stamps every key with the same revision.
        let mut ops: Vec<Op> = order
            .map(|k| Op::Put {
                key: k.clone(),
                value: Bytes::from(k.clone().into_bytes()),
            })
            .collect();
        ops.extend(deletes.iter().map(|k| Op::Delete { key: k.clone() }));
        store
            .commit(&[Txn {
                compare: vec![],
                ops,
            }])
            .unwrap();
        let hash = store
            .flush(keel_store::Durability::Sync, None)
            .unwrap()
            .root;
        (dir, hash)
    };
    let (_a, forward) = build(&mut keys.iter(), &[]);
    let (_b, backward) = build(&mut keys.iter().rev(), &[]);
    assert_eq!(forward, backward);
    // Adding 1000 extra keys then deleting them collapses back to the same shape.
    let extra: Vec<String> = (0..1000).map(|i| format!("big/extra{i}")).collect();
    let (_c, collapsed) = build(&mut keys.iter().chain(extra.iter()), &extra);
    assert_eq!(forward, collapsed);
}

#[test]
fn deleting_everything_collapses_to_the_empty_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let empty = store
        .flush(keel_store::Durability::Sync, None)
        .unwrap()
        .root;
    let ops: Vec<Op> = (0..5000)
        .map(|i| Op::Put {
            key: format!("d{}/n{i}", i % 3),
            value: Bytes::from_static(b"v"),
        })
        .collect();
    store
        .commit(&[Txn {
            compare: vec![],
            ops,
        }])
        .unwrap();
    let ops: Vec<Op> = (0..5000)
        .map(|i| Op::Delete {
            key: format!("d{}/n{i}", i % 3),
        })
        .collect();
    store
        .commit(&[Txn {
            compare: vec![],
            ops,
        }])
        .unwrap();
    assert_eq!(
        store
            .flush(keel_store::Durability::Sync, None)
            .unwrap()
            .root,
        empty
    );
}

#[test]
fn large_values_are_chunked_deduplicated_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let big = noise(7, 3 * 1024 * 1024 + 17);
    put(&store, "blob/one", &big);
    let after_one = store.stats().pack_bytes;
    put(&store, "blob/two", &big);
    let growth = store.stats().pack_bytes - after_one;
    assert!(
        growth < 16 * 1024,
        "an identical value must dedup, pack grew {growth} bytes"
    );
    let entry = store.get("blob/two").unwrap().unwrap();
    assert!(matches!(entry.value, EntryValue::Chunked { size, .. } if size == big.len() as u64));
    assert_eq!(
        store.snapshot().get_value("blob/one").unwrap().unwrap(),
        big
    );
    // A value just above the inline limit is a single chunk blob.
    put(&store, "small", &[5u8; 2000]);
    assert!(matches!(
        store.get("small").unwrap().unwrap().value,
        EntryValue::Blob { size: 2000, .. }
    ));
}

#[test]
fn streamed_value_of_one_gib_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path(), StoreOptions::default()).unwrap();
    const SIZE: u64 = 1 << 30;
    let (value, hold) = store.upload(&mut NoiseReader::new(99, SIZE)).unwrap();
    store
        .commit(&[Txn {
            compare: vec![],
            ops: vec![value.into_op("huge".into())],
        }])
        .unwrap();
    drop(hold);
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let entry = store.get("huge").unwrap().unwrap();
    assert_eq!(entry.value.size(), Some(SIZE));
    let mut expected = blake3::Hasher::new();
    std::io::copy(&mut NoiseReader::new(99, SIZE), &mut expected).unwrap();
    let mut actual = blake3::Hasher::new();
    assert_eq!(
        store
            .snapshot()
            .write_to(&entry.value, &mut actual)
            .unwrap(),
        SIZE
    );
    assert_eq!(actual.finalize(), expected.finalize());
}

#[test]
fn checkpoints_retention_old_reads_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        keep_newest: 3,
        keep_hourly_hours: 0,
    };
    let store = Store::init(dir.path(), small_options(retention)).unwrap();
    let mut sequences = Vec::new();
    for round in 0..10u8 {
        // Rewrite the same keys with large values so old versions become garbage.
        for k in 0..4 {
            put(
                &store,
                &format!("k{k}"),
                &noise(u64::from(round) * 10 + k, 40_000),
            );
        }
        sequences.push(store.checkpoint().unwrap().sequence);
    }
    let kept: Vec<u64> = store.checkpoints().iter().map(|c| c.sequence).collect();
    assert_eq!(kept, sequences[7..].to_vec());
    assert!(matches!(
        store.at_checkpoint(sequences[2]),
        Err(StoreError::CheckpointNotFound { .. })
    ));
    let before = store.stats().pack_bytes;
    let report = store.gc(false).unwrap();
    assert!(report.segments_compacted > 0, "{report:?}");
    assert!(
        store.stats().pack_bytes < before,
        "gc reclaimed nothing: {report:?}"
    );
    // Every retained checkpoint still reads its own values after collection.
    for (i, sequence) in sequences.iter().enumerate().skip(7) {
        let view = store.at_checkpoint(*sequence).unwrap();
        for k in 0..4 {
            let value = view.get_value(&format!("k{k}")).unwrap().unwrap();
            assert_eq!(value, noise(i as u64 * 10 + k, 40_000));
        }
    }
    drop(store);
    let store = Store::open(dir.path(), small_options(retention)).unwrap();
    assert_eq!(
        store.snapshot().get_value("k3").unwrap().unwrap(),
        noise(93, 40_000)
    );
    assert!(!store.recovery().found_damage(), "{:?}", store.recovery());
}

#[test]
fn revisions_are_never_reused_after_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    put(&store, "a", b"1");
    let first = store.checkpoint().unwrap();
    put(&store, "a", b"2");
    put(&store, "b", b"3");
    let high = store.revision();
    let reset = store.reset_to_root(first.root, None).unwrap();
    assert!(
        reset.revision > high,
        "reset revision {} must exceed {high}",
        reset.revision
    );
    assert_eq!(store.snapshot().get_value("a").unwrap().unwrap(), "1");
    assert!(store.get("b").unwrap().is_none());
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.revision(), reset.revision);
    assert!(
        matches!(put(&store, "c", b"4"), TxnOutcome::Applied { revision, .. } if revision == reset.revision + 1)
    );
}

#[test]
fn a_checkpoint_is_taken_when_only_the_meta_moved() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    put(&store, "k", b"v");
    store
        .flush(keel_store::Durability::Sync, Some(b"at 1".to_vec()))
        .unwrap();
    let first = store.checkpoint().unwrap();
    assert_eq!(
        store.checkpoint().unwrap().sequence,
        first.sequence,
        "nothing moved"
    );
    // Same data, a new position (a replica applied entries that changed nothing).
    store
        .flush(keel_store::Durability::Sync, Some(b"at 2".to_vec()))
        .unwrap();
    let second = store.checkpoint().unwrap();
    assert_eq!((second.root, second.revision), (first.root, first.revision));
    assert!(second.sequence > first.sequence);
    assert_eq!(store.checkpoints().last().unwrap().meta, b"at 2");
}

#[test]
fn applied_state_is_readable_before_flush_and_lost_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    put(&store, "durable", b"yes");
    store
        .apply(&[Txn::put("volatile", noise(1, 5000))])
        .unwrap();
    assert_eq!(
        store.snapshot().get_value("volatile").unwrap().unwrap(),
        noise(1, 5000)
    );
    drop(store); // like a crash: nothing flushed the apply
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(store.get("volatile").unwrap().is_none());
    assert_eq!(
        store.snapshot().get_value("durable").unwrap().unwrap(),
        "yes"
    );
    assert!(store.recovery().unclean_shutdown);
    store.close().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(!store.recovery().unclean_shutdown);
}

#[test]
fn read_only_open_sees_a_consistent_state_while_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    put(&store, "x", b"1");
    assert!(matches!(
        Store::open(dir.path(), StoreOptions::default()),
        Err(StoreError::Locked { .. })
    ));
    let reader = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.snapshot().get_value("x").unwrap().unwrap(), "1");
    assert!(matches!(
        reader.commit(&[Txn::put("y", "2")]),
        Err(StoreError::ReadOnly)
    ));
}

#[test]
fn removing_a_multi_level_boundary_keeps_reused_siblings() {
    // "x2" ends a node at levels 0..=2 and "x3" at levels 0 and 2: deleting
    // "x2" leaves "x3" in a subtree that the rebuild reuses whole, two levels up.
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    put(&store, "d0/s/x3", b"");
    put(&store, "d0/s/x2", b"a");
    store.commit(&[Txn::delete("d0/s/x2")]).unwrap();
    let keys: Vec<String> = store
        .snapshot()
        .list("", true)
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys, vec!["d0/s/x3"]);
}

/// A read that must not wait for the disk either gives up (`None`) or gives
/// exactly what a normal read gives; once the nodes it needs are cached, a
/// read of an inline value needs no file at all and always succeeds.
#[test]
fn resident_reads_agree_with_normal_reads_and_never_wait_for_cached_nodes() {
    use keel_store::resident::resident;
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let key = |i: usize| format!("dir{}/key{i:05}", i % 7);
    let value = |i: usize| -> Vec<u8> {
        // Every 50th value is too large to be inline: a blob of its own.
        let len = if i.is_multiple_of(50) {
            8 * 1024
        } else {
            1 + i % 300
        };
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    };
    let txns: Vec<Txn> = (0..2_000).map(|i| Txn::put(key(i), value(i))).collect();
    store.commit(&txns).unwrap();
    drop(store);
    // Reopened: no directory node is cached.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let snapshot = store.snapshot();
    let mut served = 0;
    for i in 0..2_000 {
        if let Some(read) = resident(|| snapshot.get_value(&key(i))) {
            assert_eq!(read.unwrap().unwrap(), value(i), "{}", key(i));
            served += 1;
        }
    }
    eprintln!("cold node cache: {served} of 2000 reads served from memory");
    for i in 0..2_000 {
        assert_eq!(snapshot.get_value(&key(i)).unwrap().unwrap(), value(i));
    }
    for i in (0..2_000usize).filter(|i| !i.is_multiple_of(50)) {
        let read = resident(|| snapshot.get_value(&key(i))).unwrap_or_else(|| {
            panic!(
                "{}: an inline value under cached nodes needs no file",
                key(i)
            )
        });
        assert_eq!(read.unwrap().unwrap(), value(i));
    }
    let missing = resident(|| snapshot.get_value("dir1/absent")).expect("cached nodes");
    assert_eq!(missing.unwrap(), None);
}

#[test]
fn readers_see_every_apply_and_keep_their_snapshot_while_the_writer_edits_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let batch = |round: u64| -> Vec<Txn> {
        (0..200)
            .map(|i| Txn::put(format!("d/{i:04}"), format!("{round}-{i}")))
            .collect()
    };
    store.apply(&batch(0)).unwrap();
    let first = store.snapshot();
    // Unpublished batches are edited in place; a reader's snapshot must not
    // see them, and a new snapshot must see all of them.
    store.apply(&batch(1)).unwrap();
    store.apply(&batch(2)).unwrap();
    assert_eq!(store.revision(), 600);
    let third = store.snapshot();
    store.apply(&batch(3)).unwrap();
    for i in [0, 77, 199] {
        let key = format!("d/{i:04}");
        assert_eq!(first.get_value(&key).unwrap().unwrap(), format!("0-{i}"));
        assert_eq!(third.get_value(&key).unwrap().unwrap(), format!("2-{i}"));
        assert_eq!(
            store.snapshot().get_value(&key).unwrap().unwrap(),
            format!("3-{i}")
        );
    }
    assert_eq!((first.revision(), third.revision()), (200, 600));
}

#[test]
fn a_failed_apply_keeps_the_published_state_and_refuses_changes_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Arc::new(SpaceLimit::default());
    let options = StoreOptions {
        space_limit: Some(limit.clone()),
        ..StoreOptions::default()
    };
    let store = Store::init(dir.path(), options.clone()).unwrap();
    store.commit(&[Txn::put("flushed", "1")]).unwrap();
    store.apply(&[Txn::put("published", "2")]).unwrap();
    let published = store.snapshot();
    store.apply(&[Txn::put("unpublished", "3")]).unwrap();
    // The second put's value is stored as a blob, and the disk is full.
    limit.set_remaining(Some(0));
    let failed = store.apply(&[Txn::put("partial", "4"), Txn::put("big", noise(1, 5000))]);
    assert!(
        matches!(failed, Err(StoreError::DiskFull { .. })),
        "{failed:?}"
    );
    limit.set_remaining(None);
    // Readers keep the last published state, never the half-applied one.
    let now = store.snapshot();
    assert_eq!(now.revision(), published.revision());
    assert_eq!(now.get_value("published").unwrap().unwrap(), "2");
    assert!(now.get("unpublished").unwrap().is_none());
    assert!(now.get("partial").unwrap().is_none());
    for refused in [
        store.apply(&[Txn::put("later", "5")]).map(|_| ()),
        store.commit(&[Txn::put("later", "5")]).map(|_| ()),
        store.flush(Durability::Sync, None).map(|_| ()),
    ] {
        let error = refused.unwrap_err();
        assert!(matches!(error, StoreError::Abandoned { .. }), "{error:?}");
        assert!(error.to_string().contains("restart"), "{error}");
    }
    drop((store, now, published));
    // Reopened: the last flushed state, writable again.
    let store = Store::open(dir.path(), options).unwrap();
    assert_eq!(store.snapshot().get_value("flushed").unwrap().unwrap(), "1");
    assert!(store.get("published").unwrap().is_none());
    store.commit(&[Txn::put("later", "5")]).unwrap();
}
