//! The background scrub and read repair on a real 3-node cluster: blobs
//! damaged with `keel debug corrupt` on stopped nodes are repaired from
//! peers; a blob damaged on every node is reported critical and its key
//! fails clearly, while every other key reads fine. Bounded in rounds and
//! time; every test prints its seed (replay with `KEEL_TEST_SEED`).

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::{eventually, keel, serial, Cluster, READY_TIMEOUT};
use keel_node::client::{Client, ClientError};
use keel_node::health::diag::Verdict;
use keel_node::scrub::{ScrubStatus, Trigger, RECENT_REPAIRS_MAX};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A scrub fast enough for a test: a pass over the data set takes seconds.
const SCRUB_FAST: [&str; 4] = ["--scrub-rate", "2000000", "--scrub-pause", "300ms"];
/// No background scrub (reads still repair what they meet).
const SCRUB_OFF: [&str; 2] = ["--scrub-rate", "0"];
/// Requests in flight at once against one node.
const CONCURRENT_REQUESTS: usize = 32;
const SCRUB_TIMEOUT: Duration = Duration::from_secs(180);
/// Rest between two rounds of reads while the scrub works (1,000 rounds
/// take longer than `SCRUB_TIMEOUT`).
const ROUND_PAUSE: Duration = Duration::from_millis(200);

type Model = BTreeMap<String, Vec<u8>>;

fn flags(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|f| f.to_string()).collect()
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    bytes
}

/// `dirs` × 50 small inline values in nested directories (several nodes per
/// directory), a value of a few KiB every 37th key (one chunk), and `big`
/// values of 1–2.5 MiB (chunk lists and chunks).
fn data_set(seed: u64, dirs: usize, big: usize) -> Model {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = Model::new();
    for d in 0..dirs {
        for k in 0..50 {
            let key = format!("d{}/e{}/k{k}", d / 10, d % 10);
            let value = if model.len().is_multiple_of(37) {
                let len = rng.gen_range(2_000..8_000);
                random_bytes(&mut rng, len)
            } else {
                format!("{seed}:{key}:{}", rng.gen::<u32>()).into_bytes()
            };
            model.insert(key, value);
        }
        model.insert(
            format!("d{}/e{}/deeper/f/g", d / 10, d % 10),
            vec![b'x'; 10],
        );
    }
    for b in 0..big {
        let len = rng.gen_range(1024 * 1024..5 * 512 * 1024);
        model.insert(format!("big/v{b}"), random_bytes(&mut rng, len));
    }
    model
}

async fn write_all(client: &Client, model: &Model) {
    let writes = futures::stream::iter(model.iter())
        .map(|(key, value)| async move {
            let result = client.put(key, value.clone(), None).await;
            (key, result)
        })
        .buffer_unordered(CONCURRENT_REQUESTS)
        .collect::<Vec<_>>()
        .await;
    for (key, result) in writes {
        result.unwrap_or_else(|e| panic!("writing {key}: {e}"));
    }
}

/// Reads `keys` from `client`, linearizable and stale; every value must be
/// the model's.
async fn read_all<'a>(
    client: &Client,
    model: &Model,
    keys: impl Iterator<Item = &'a String>,
    context: &str,
) {
    let keys: Vec<&String> = keys.collect();
    for stale in [false, true] {
        let reads = futures::stream::iter(keys.iter())
            .map(|key| async move { (*key, client.get(key, stale).await) })
            .buffer_unordered(CONCURRENT_REQUESTS)
            .collect::<Vec<_>>()
            .await;
        for (key, result) in reads {
            let value =
                result.unwrap_or_else(|e| panic!("{context}: reading {key} (stale={stale}): {e}"));
            assert!(
                value.bytes == model[key],
                "{context}: {key} (stale={stale}) read {} bytes that are not the {} written",
                value.bytes.len(),
                model[key].len()
            );
        }
    }
}

/// One blob damaged by `keel debug corrupt`, and the paths it reaches.
#[derive(Debug)]
struct Damaged {
    blob: String,
    paths: BTreeSet<String>,
}

/// Runs `keel debug corrupt` on a stopped node's data directory.
fn corrupt(dir: &Path, mode: &str, target: &[&str], seed: u64) -> Vec<Damaged> {
    let output = keel()
        .args(["debug", "corrupt", "--data-dir"])
        .arg(dir)
        .args(["--mode", mode, "--seed", &seed.to_string()])
        .args(target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "keel debug corrupt --mode {mode} {target:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut by_blob: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for damage in report["damaged"].as_array().unwrap() {
        by_blob
            .entry(damage["blob"].as_str().unwrap().to_string())
            .or_default()
            .insert(damage["path"].as_str().unwrap().to_string());
    }
    println!("corrupt --mode {mode} {target:?}: {by_blob:?}");
    by_blob
        .into_iter()
        .map(|(blob, paths)| Damaged { blob, paths })
        .collect()
}

/// Whether reading `key` can meet damage at `path` (the key itself, or a
/// directory above it).
fn reaches(key: &str, path: &str) -> bool {
    path == "/" || key == path || key.starts_with(&format!("{path}/"))
}

fn repaired_blobs(status: &ScrubStatus, trigger: Trigger) -> BTreeSet<String> {
    status
        .recent_repairs
        .iter()
        .filter(|r| r.trigger == trigger)
        .map(|r| r.blob.to_string())
        .collect()
}

fn assert_no_panic(cluster: &Cluster) {
    for member in &cluster.members {
        assert!(
            !member.log_text().contains("panicked"),
            "{} logged a panic",
            member.url()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_blobs_on_one_node_are_repaired_from_peers() {
    let _serial = serial().await;
    let seed = harness::seed("scrub repair");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::three_with(flags(&SCRUB_OFF)).await;
    let model = data_set(seed, 60, 6);
    write_all(&cluster.members[0].client(), &model).await;
    cluster.wait_equal_roots(READY_TIMEOUT).await;
    let node = 1;
    let dir = cluster.members[node].dir.clone();

    // Read repair, with no background scrub: a value's chunk flipped, a
    // chunk deleted, a directory's root node damaged.
    cluster.members[node].stop();
    let medium = model
        .iter()
        .find(|(k, v)| v.len() > 1024 && k.starts_with("d2/"))
        .map(|(k, _)| k.clone())
        .unwrap();
    let mut read_damage = corrupt(&dir, "flip-bits", &["--key", "big/v0"], rng.gen());
    read_damage.extend(corrupt(&dir, "delete-blob", &["--key", &medium], rng.gen()));
    read_damage.extend(corrupt(&dir, "damage-dir", &["--key", "d1/e3"], rng.gen()));
    cluster.members[node].serve_args = flags(&SCRUB_OFF);
    cluster.members[node].start();
    cluster.wait_ready(&[node], READY_TIMEOUT).await;
    let client = cluster.members[node].client();
    read_all(&client, &model, model.keys(), "read repair").await;
    let status = client.scrub_status().await.unwrap();
    assert!(
        !status.enabled && status.passes_completed == 0,
        "{status:?}"
    );
    assert_eq!(
        status.recent_repairs.len(),
        read_damage.len(),
        "each damaged blob repaired once, however many reads met it: {status:#?}"
    );
    let by_reads = repaired_blobs(&status, Trigger::Read);
    for damaged in &read_damage {
        assert!(
            by_reads.contains(&damaged.blob),
            "{damaged:?} was not repaired by a read: {status:#?}"
        );
    }
    assert!(status.critical.is_empty(), "{status:#?}");

    // The scrub: random damage of every kind, repaired in the background
    // while the keys it does not reach are read.
    cluster.members[node].stop();
    let mut damage = Vec::new();
    for (mode, count) in [
        ("flip-bits", 4),
        ("delete-blob", 4),
        ("damage-dir", 3),
        ("delete-dir", 2),
        ("delete-dir-node", 2),
    ] {
        let random = count.to_string();
        damage.extend(corrupt(&dir, mode, &["--random", &random], rng.gen()));
    }
    let damaged_blobs: BTreeSet<String> = damage.iter().map(|d| d.blob.clone()).collect();
    assert!(
        damaged_blobs.len() + read_damage.len() <= RECENT_REPAIRS_MAX,
        "the status lists only the latest {RECENT_REPAIRS_MAX} repairs"
    );
    let healthy: Vec<&String> = model
        .keys()
        .filter(|k| !damage.iter().any(|d| d.paths.iter().any(|p| reaches(k, p))))
        .collect();
    println!(
        "{} blobs damaged; {} of {} keys reach none of them",
        damaged_blobs.len(),
        healthy.len(),
        model.len()
    );
    cluster.members[node].serve_args = flags(&SCRUB_FAST);
    cluster.members[node].start();
    cluster.wait_ready(&[node], READY_TIMEOUT).await;
    let started = Instant::now();
    let mut rounds = 0;
    let status = loop {
        read_all(&client, &model, healthy.iter().copied(), "while scrubbing").await;
        rounds += 1;
        let status = client.scrub_status().await.unwrap();
        let by_scrub = repaired_blobs(&status, Trigger::Scrub);
        if damaged_blobs.is_subset(&by_scrub) && status.passes_completed > 0 {
            break status;
        }
        assert!(
            started.elapsed() < SCRUB_TIMEOUT && rounds < 1_000,
            "the scrub did not repair every damaged blob in time: {status:#?}"
        );
        // Paced, so that the time limit, not the round cap, bounds the wait
        // however fast a round of reads is.
        tokio::time::sleep(ROUND_PAUSE).await;
    };
    println!(
        "every damaged blob repaired after {rounds} read rounds, {:?}",
        started.elapsed()
    );
    assert!(status.critical.is_empty(), "{status:#?}");
    let peers: BTreeSet<String> = cluster.members.iter().map(|m| m.url()).collect();
    for repair in &status.recent_repairs {
        assert!(
            peers.contains(&repair.peer) && repair.peer != client.endpoint(),
            "{repair:?}"
        );
    }
    // A whole pass begun after the last repair finds nothing left.
    let last_repair = status.recent_repairs.iter().map(|r| r.at_ms).max().unwrap();
    eventually("a clean scrub pass", SCRUB_TIMEOUT, || {
        let client = client.clone();
        async move {
            let status = client.scrub_status().await.unwrap();
            status.last_pass.is_some_and(|pass| {
                pass.started_at_ms > last_repair
                    && pass.damaged_found == 0
                    && pass.objects_verified > 0
            }) && status.critical.is_empty()
        }
    })
    .await;
    read_all(&client, &model, model.keys(), "after the scrub").await;
    cluster.members[node].stop();
    harness::fsck_clean(&dir);
    assert_no_panic(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_damaged_on_every_node_is_critical_and_its_key_fails_clearly() {
    let _serial = serial().await;
    let seed = harness::seed("scrub critical");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::three_with(flags(&SCRUB_OFF)).await;
    let mut model = data_set(seed, 6, 1);
    let key = "apps/critical/blob".to_string();
    model.insert(key.clone(), random_bytes(&mut rng, 6_000));
    write_all(&cluster.members[0].client(), &model).await;
    cluster.wait_equal_roots(READY_TIMEOUT).await;

    for member in cluster.members.iter_mut() {
        member.stop();
    }
    // `--key` damages the first chunk of the key in hash order; the trees
    // are equal, so it is the same blob on every node.
    let mut blobs = BTreeSet::new();
    for member in &cluster.members {
        let damage = corrupt(&member.dir, "flip-bits", &["--key", &key], rng.gen());
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].paths, BTreeSet::from([key.clone()]));
        blobs.insert(damage[0].blob.clone());
    }
    assert_eq!(blobs.len(), 1, "not the same blob on every node: {blobs:?}");
    let blob = blobs.into_iter().next().unwrap();
    for member in cluster.members.iter_mut() {
        member.serve_args = flags(&SCRUB_FAST);
        member.start();
    }
    cluster.wait_voters(3, READY_TIMEOUT).await;

    for member in &cluster.members {
        let client = member.client();
        let what = format!("{} reporting {blob} critical", member.url());
        eventually(&what, SCRUB_TIMEOUT, || {
            let (client, blob, key) = (client.clone(), blob.clone(), key.clone());
            async move {
                let status = client.scrub_status().await.unwrap();
                status.critical.iter().any(|c| {
                    c.blob.to_string() == blob
                        && c.keys.contains(&key)
                        && c.reason.starts_with("no replica holds an intact copy")
                })
            }
        })
        .await;
        for stale in [false, true] {
            match client.get(&key, stale).await {
                Err(ClientError::Api {
                    status,
                    code,
                    message,
                    ..
                }) => {
                    assert_eq!((status, code.as_str()), (500, "data_damaged"), "{message}");
                    assert!(
                        message.contains(&key)
                            && message.contains(&blob)
                            && message.contains("no replica holds an intact copy"),
                        "unclear error: {message}"
                    );
                }
                other => panic!("{}: reading {key} (stale={stale}): {other:?}", member.url()),
            }
        }
        let others = model.keys().filter(|k| **k != key);
        read_all(&client, &model, others, &member.url()).await;
        let status = client.scrub_status().await.unwrap();
        assert_eq!(status.critical.len(), 1, "{status:#?}");
        // `keel diag` names it too.
        let diagnostics = client.node_diagnostics().await.unwrap();
        let scrub = diagnostics
            .checks
            .iter()
            .find(|c| c.name == "scrub")
            .expect("a scrub check");
        assert_eq!(scrub.verdict, Verdict::Critical, "{scrub:#?}");
        assert!(
            scrub.summary.contains(&blob) && scrub.summary.contains(&key),
            "{scrub:#?}"
        );
    }
    assert_no_panic(&cluster);
}
