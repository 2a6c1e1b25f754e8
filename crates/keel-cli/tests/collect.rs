//! A busy node collects its store's garbage in the background: writers
//! overwrite the same few keys with large values, over and over, and the
//! node keeps its pack far below what they wrote, with no operator command
//! and without ever reaching low-space mode; every value reads back and
//! `keel fsck` finds the store clean. Bounded in writes and time; the seed
//! is printed.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{eventually, fsck_clean, seed, serial, Cluster};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Values are random (incompressible) and this large.
const VALUE_BYTES: usize = 48 * 1024;
const WRITERS: usize = 8;
/// Keys each writer overwrites in turn.
const KEYS_PER_WRITER: usize = 2;
const WRITES_PER_WRITER: usize = 500;
/// The pack must hold less than this share of what the writers wrote.
const PACK_SHARE_MAX: f64 = 0.5;
const COLLECTED_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_collects_its_garbage_in_the_background() {
    let _serial = serial().await;
    let seed = seed("a_busy_node_collects_its_garbage_in_the_background");
    let mut cluster =
        Cluster::found_with(vec!["--disk-collect-after".into(), "16MiB".into()], |_| {}).await;
    let client = cluster.members[0].client();
    let writers = (0..WRITERS).map(|w| {
        let client = client.clone();
        async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (w as u64 + 1));
            let mut latest = BTreeMap::new();
            for i in 0..WRITES_PER_WRITER {
                let key = format!("busy/w{w}/k{}", i % KEYS_PER_WRITER);
                let mut value = vec![0u8; VALUE_BYTES];
                rng.fill(&mut value[..]);
                client
                    .put(&key, value.clone(), None)
                    .await
                    .unwrap_or_else(|e| panic!("writer {w}: {key}: {e}"));
                latest.insert(key, value);
            }
            latest
        }
    });
    let mut latest = BTreeMap::new();
    for written in futures::future::join_all(writers).await {
        latest.extend(written);
    }
    let written = (WRITERS * WRITES_PER_WRITER * VALUE_BYTES) as f64;

    eventually(
        "a background collection that compacted a segment",
        COLLECTED_TIMEOUT,
        || {
            let client = client.clone();
            async move {
                let disk = client.disk_status().await.unwrap();
                if let Some(collected) = &disk.last_collection {
                    assert_eq!(collected.error, None, "{collected:?}");
                }
                disk.last_collection
                    .is_some_and(|collected| collected.segments_compacted > 0)
            }
        },
    )
    .await;
    let disk = client.disk_status().await.unwrap();
    assert!(!disk.low_space && disk.last_reclaim.is_none(), "{disk:?}");
    let pack = client.status().await.unwrap().pack_bytes as f64;
    println!(
        "pack {:.1} MiB after {:.1} MiB written",
        pack / 1048576.0,
        written / 1048576.0
    );
    assert!(
        pack < written * PACK_SHARE_MAX,
        "the pack holds {pack} bytes of the {written} written (seed {seed})"
    );

    for (key, value) in &latest {
        let read = client.get(key, false).await.unwrap();
        assert!(read.bytes == value[..], "{key} reads back (seed {seed})");
    }
    cluster.members[0].stop();
    fsck_clean(&cluster.members[0].dir);
}
