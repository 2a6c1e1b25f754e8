//! Multi-process fault tests of the cluster on loopback: real `keel serve`
//! processes, killed with SIGKILL, restarted, damaged, wiped. Every test is
//! bounded in rounds and time and prints its seed.

mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{eventually, keel, serial, Cluster, READY_TIMEOUT};
use keel_node::client::Client;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Writers that put unique keys through random nodes until stopped,
/// recording only acknowledged writes.
fn start_writers(
    urls: Vec<String>,
    writers: usize,
    seed: u64,
    prefix: &str,
) -> (Acked, Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..writers)
        .map(|w| {
            let (urls, acked, stop) = (urls.clone(), acked.clone(), stop.clone());
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let clients: Vec<Client> = urls.iter().map(|u| Client::new(u)).collect();
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(w as u64));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{prefix}/w{w}/k{n}");
                    let value = format!("{seed}:{w}:{n}");
                    let client = &clients[rng.gen_range(0..clients.len())];
                    match tokio::time::timeout(
                        Duration::from_secs(12),
                        client.put(&key, value.clone(), None),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            acked.lock().unwrap().insert(key, value);
                            n += 1;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    (acked, stop, handles)
}

/// Every acknowledged write reads back (linearizably) from `client`.
async fn verify_acked(client: &Client, acked: &BTreeMap<String, String>, context: &str) {
    let keys: Vec<(&String, &String)> = acked.iter().collect();
    for chunk in keys.chunks(64) {
        let reads = chunk.iter().map(|(key, _)| client.get(key, false));
        for ((key, expected), result) in chunk.iter().zip(futures::future::join_all(reads).await) {
            let value = result
                .unwrap_or_else(|e| panic!("{context}: acknowledged {key} is unreadable: {e}"));
            assert_eq!(
                value.bytes,
                expected.as_bytes(),
                "{context}: {key} has the wrong value"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_random_nodes_under_write_load_loses_nothing_acknowledged() {
    let _serial = serial().await;
    let seed = harness::seed("kill-9 under load");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::three().await;
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    let (acked, stop, writers) = start_writers(urls, 4, seed, "load");
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        let victim = if rng.gen_bool(0.4) {
            cluster.leader().await.unwrap_or(0)
        } else {
            rng.gen_range(0..cluster.members.len())
        };
        println!(
            "round {round}: kill -9 node at {}",
            cluster.members[victim].url()
        );
        cluster.members[victim].kill();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2000))).await;
        cluster.members[victim].start();
        cluster.wait_ready(&[victim], READY_TIMEOUT).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    cluster.wait_voters(3, READY_TIMEOUT).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the writers made too little progress: {}",
        acked.len()
    );
    for member in &cluster.members {
        verify_acked(
            &member.client(),
            &acked,
            &format!("seed {seed}, node {}", member.url()),
        )
        .await;
    }
    let (revision, root) = cluster.wait_equal_roots(Duration::from_secs(30)).await;
    println!(
        "{} acknowledged writes, all replicas at revision {revision} with root {root}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_power_loss_serves_again_with_no_operator() {
    // Kura: every replica restarted at once, and none could bootstrap.
    let _serial = serial().await;
    let seed = harness::seed("kill all, restart all");
    let mut cluster = Cluster::three().await;
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    let mut all_acked = BTreeMap::new();
    for round in 0..3 {
        let (acked, stop, writers) =
            start_writers(urls.clone(), 3, seed + round, &format!("round{round}"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // All at once, while writes are in flight.
        for member in &mut cluster.members {
            member.kill();
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        for member in &mut cluster.members {
            member.start();
        }
        let client = cluster.members[0].client();
        eventually(
            &format!("round {round}: the restarted cluster accepts writes"),
            READY_TIMEOUT,
            || {
                let client = client.clone();
                async move { client.put("probe", "after restart", None).await.is_ok() }
            },
        )
        .await;
        all_acked.extend(acked.lock().unwrap().clone());
        verify_acked(&client, &all_acked, &format!("seed {seed}, round {round}")).await;
        println!(
            "round {round}: {} acknowledged writes survived",
            all_acked.len()
        );
    }
    cluster.wait_voters(3, READY_TIMEOUT).await;
    cluster.wait_equal_roots(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torn_raft_log_tail_starts_and_catches_up() {
    // PySyncObj: a commit index past the end of the journal deadlocked start-up.
    let _serial = serial().await;
    let seed = harness::seed("torn Raft log");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::three().await;
    let client = cluster.members[0].client();
    for i in 0..200 {
        client
            .put(&format!("before/k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    for round in 0..2 {
        // First a follower, then the leader.
        let leader = cluster.leader().await.unwrap();
        let victim = if round == 0 { (leader + 1) % 3 } else { leader };
        cluster.members[victim].kill();
        let raft = cluster.members[victim].dir.join("raft");
        let mut segments: Vec<_> = std::fs::read_dir(&raft)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        segments.sort();
        let newest = segments.last().unwrap();
        // The end of its records: the active segment holds zeros past them.
        let bytes = std::fs::read(newest).unwrap();
        let len = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1) as u64;
        assert!(len > 0, "the newest segment holds records");
        let cut = rng.gen_range(len.saturating_sub(4096)..len);
        if rng.gen_bool(0.5) {
            std::fs::OpenOptions::new()
                .write(true)
                .open(newest)
                .unwrap()
                .set_len(cut)
                .unwrap();
        } else {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(newest)
                .unwrap();
            file.write_all_at(&vec![0u8; (len - cut) as usize], cut)
                .unwrap();
        }
        println!(
            "round {round}: damaged {} from byte {cut} of {len}",
            newest.display()
        );
        // Writes continue on the other two meanwhile.
        let other = cluster.members[(victim + 1) % 3].client();
        eventually("writes while a node is down", READY_TIMEOUT, || {
            let other = other.clone();
            async move {
                other
                    .put(&format!("during/r{round}"), "x", None)
                    .await
                    .is_ok()
            }
        })
        .await;
        cluster.members[victim].start();
        cluster.wait_ready(&[victim], READY_TIMEOUT).await;
        let healed = cluster.members[victim].client();
        for i in 0..200 {
            assert_eq!(
                healed
                    .get(&format!("before/k{i}"), false)
                    .await
                    .unwrap()
                    .bytes,
                format!("v{i}").as_bytes()
            );
        }
        assert_eq!(
            healed
                .get(&format!("during/r{round}"), false)
                .await
                .unwrap()
                .bytes,
            "x".as_bytes()
        );
    }
    cluster.wait_equal_roots(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_refuses_its_old_id_and_rejoins_as_a_new_member() {
    let _serial = serial().await;
    let mut cluster = Cluster::three().await;
    let client = cluster.members[0].client();
    for i in 0..50 {
        client
            .put(&format!("data/k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let leader = cluster.leader().await.unwrap();
    let victim = (leader + 1) % 3;
    let old_id = cluster.members[victim]
        .client()
        .status()
        .await
        .unwrap()
        .node_id;
    cluster.members[victim].kill();
    // The volume is gone: an empty mount point is left.
    let dir = cluster.members[victim].dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let refused = keel()
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", cluster.members[victim].port),
        ])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("will not start under its old id") && message.contains("keel join"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "a refused start creates nothing"
    );

    // A store that is not this member's (another volume) is refused too.
    let other = cluster.base.path().join("other");
    assert!(keel()
        .args(["init", "--standalone", "--data-dir"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    let refused = keel()
        .args(["serve", "--data-dir"])
        .arg(&other)
        .args(["--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a member"));

    // `keel join` brings it back under a new id, and the dead id is removed.
    cluster.join(&cluster.members[victim]);
    cluster.members[victim].start();
    cluster.wait_voters(3, READY_TIMEOUT).await;
    let status = cluster.members[0].client().cluster_status().await.unwrap();
    let ids: Vec<u64> = status.members.iter().map(|m| m.node_id).collect();
    assert!(
        !ids.contains(&old_id),
        "the dead id {old_id} must be removed: {ids:?}"
    );
    let new_id = cluster.members[victim]
        .client()
        .status()
        .await
        .unwrap()
        .node_id;
    assert!(new_id > 3, "a node id is never reused (got {new_id})");
    let rejoined = cluster.members[victim].client();
    assert_eq!(
        rejoined.get("data/k49", false).await.unwrap().bytes,
        "v49".as_bytes()
    );
    cluster.wait_equal_roots(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_directory_vanishing_while_running_stops_acknowledgements() {
    let _serial = serial().await;
    let mut cluster = Cluster::three().await;
    let leader = cluster.leader().await.unwrap();
    let victim = (leader + 1) % 3;
    let dir = cluster.members[victim].dir.clone();
    let moved = dir.with_extension("unmounted");
    std::fs::rename(&dir, &moved).unwrap();
    let client = cluster.members[victim].client();
    eventually(
        "the fenced node reports not ready",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                client.status().await.is_ok_and(|s| {
                    !s.ready
                        && s.not_ready_reason
                            .as_deref()
                            .is_some_and(|r| r.contains("data directory"))
                })
            }
        },
    )
    .await;
    let applied = client.status().await.unwrap().applied_index;
    let survivor = cluster.members[leader].client();
    for i in 0..20 {
        survivor
            .put(&format!("after/k{i}"), "v", None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.status().await.unwrap().applied_index,
        applied,
        "a fenced node applies nothing more"
    );
    // The volume comes back; a restart resumes the node with its data.
    cluster.members[victim].kill();
    std::fs::rename(&moved, &dir).unwrap();
    cluster.members[victim].start();
    cluster.wait_ready(&[victim], READY_TIMEOUT).await;
    assert_eq!(
        client.get("after/k19", false).await.unwrap().bytes,
        "v".as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_a_cluster_with_a_gib_of_data_resumes_after_a_kill_without_leaks() {
    let _serial = serial().await;
    const BYTES: u64 = 1 << 30;
    let mut cluster = Cluster::found(|dir| {
        let status = keel()
            .args(["debug", "fill", "--data-dir"])
            .arg(dir)
            .args(["--bytes", "1GiB", "--value-size", "8MiB"])
            .status()
            .unwrap();
        assert!(status.success(), "preloading 1 GiB failed");
    })
    .await;
    let mut member = cluster.new_member(2);
    cluster.join(&member);
    member.start();
    cluster.members.push(member);
    let joiner = cluster.members[1].client();
    // Kill it mid-transfer.
    eventually(
        "the snapshot transfer to make progress",
        Duration::from_secs(120),
        || {
            let joiner = joiner.clone();
            async move {
                joiner.status().await.is_ok_and(|s| {
                    s.fetches
                        .iter()
                        .any(|f| f.bytes_fetched > 128 << 20 && !f.complete)
                })
            }
        },
    )
    .await;
    cluster.members[1].kill();
    let staging = cluster.members[1].dir.join("staging");
    cluster.members[1].start();
    // Resumes: fetches only what it lacks.
    let mut most_fetched = 0u64;
    let started = std::time::Instant::now();
    while !joiner.ready().await.unwrap_or(false) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the joiner never became ready"
        );
        if let Ok(status) = joiner.status().await {
            for fetch in status.fetches {
                most_fetched = most_fetched.max(fetch.bytes_fetched);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        most_fetched < BYTES - (96 << 20),
        "after the restart it fetched {most_fetched} bytes: it did not resume"
    );
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "no staging file may be left behind"
    );
    cluster.wait_equal_roots(Duration::from_secs(60)).await;
    let founder = cluster.members[0].client();
    for n in [0u64, 127] {
        let key = format!("fill/v{n}");
        let a = founder.get(&key, false).await.unwrap().bytes;
        let b = joiner.get(&key, false).await.unwrap().bytes;
        assert_eq!(a.len(), 8 << 20);
        assert!(a == b, "{key} differs between the founder and the joiner");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_keeps_its_term_and_its_return_deposes_no_leader() {
    // Without a pre-vote round, a node cut off from its peers calls election
    // after election (every 0.6-1.2 s here), and the term it returns with
    // makes the healthy leader step down.
    let _serial = serial().await;
    let cluster = Cluster::three().await;
    cluster.wait_voters(3, READY_TIMEOUT).await;
    let leader = cluster.leader().await.expect("a leader");
    let before = cluster.members[leader].client().status().await.unwrap();
    let cut = (leader + 1) % 3;
    let cut_client = cluster.members[cut].client();
    assert_eq!(cut_client.status().await.unwrap().term, before.term);
    cut_client.isolate(true).await.unwrap();
    // Five election timeouts at most, and the lease before them.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let isolated = cut_client.status().await.unwrap();
    assert_eq!(
        isolated.term, before.term,
        "the cut-off node raised its term: {isolated:?}"
    );
    assert_ne!(isolated.role, "leader");
    cut_client.isolate(false).await.unwrap();
    let client = cluster.members[cut].client();
    eventually(
        "the returned node follows the same leader",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                client
                    .status()
                    .await
                    .is_ok_and(|s| s.leader == before.leader && s.role == "follower")
            }
        },
    )
    .await;
    // And stays so for a while: no election followed its return.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for member in &cluster.members {
        let status = member.client().status().await.unwrap();
        assert_eq!(
            (status.leader, status.term),
            (before.leader, before.term),
            "node {}: the leader or term changed after the cut-off node returned",
            status.node_id
        );
    }
}
