//! The health monitor's escalation ladder on a real 3-node cluster, with
//! short thresholds: an isolated node walks warn, fence, nudges and waits
//! (never deleting anything) and returns to normal by itself; a node whose
//! Raft log went bad is nudged, then rebuilt from its peers, but only once a
//! healthy quorum without it exists.

mod harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::workload::Workload;
use harness::{eventually, keel, Cluster};
use keel_node::client::{Client, ClientError};
use keel_node::health::diag::{NodeDiagnostics, Verdict};

const HEALTH: &str = "
[health]
warn_after_ms = 1000
isolated_after_ms = 2000
nudge_after_ms = 3000
nudge_backoff_max_ms = 6000
rebuild_after_nudges = 2
rebuild_min_window_ms = 8000
rebuild_min_interval_ms = 600000

[primary]
heartbeat_ms = 250
dead_after_ms = 1500
";

async fn three_nodes() -> Cluster {
    let config = std::env::temp_dir().join(format!("keel-health-{}.toml", std::process::id()));
    std::fs::write(&config, HEALTH).unwrap();
    let cluster = Cluster::three_with(vec!["--config".into(), config.display().to_string()]).await;
    for (i, member) in cluster.members.iter().enumerate() {
        assert_eq!(
            member.client().status().await.unwrap().node_id,
            i as u64 + 1
        );
    }
    cluster
}

async fn diag(client: &Client) -> Option<NodeDiagnostics> {
    tokio::time::timeout(Duration::from_secs(3), client.node_diagnostics())
        .await
        .ok()?
        .ok()
}

/// The ladder's steps so far, in order.
async fn steps(client: &Client) -> Vec<String> {
    diag(client)
        .await
        .map(|d| d.escalation.events.iter().map(|e| e.step.clone()).collect())
        .unwrap_or_default()
}

/// Every file under `dir` (relative paths), but the lock and markers that
/// come and go.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out.retain(|p| {
        !p.starts_with("staging")
            && !["LOCK", "DIRTY", "fault-isolated"].contains(&p.to_str().unwrap_or(""))
            && !p.to_string_lossy().starts_with("raft/state.")
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_node_walks_the_ladder_deletes_nothing_and_recovers_by_itself() {
    let cluster = three_nodes().await;
    let base = cluster.base.path().to_path_buf();
    let group = keel()
        .args([
            "group",
            "set",
            "default",
            "--cooldown",
            "2s",
            "--handover",
            "500ms",
        ])
        .args(["--endpoint", &cluster.members[0].url()])
        .output()
        .unwrap();
    assert!(
        group.status.success(),
        "{}",
        String::from_utf8_lossy(&group.stderr)
    );
    let workload = Workload::new(&base.join("workload"));
    let mut supervisors: Vec<_> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| workload.supervise(&m.url(), "1s", &base.join(format!("run{}.log", i + 1))))
        .collect();
    let node1 = cluster.members[0].client();
    let other = cluster.members[1].client();
    eventually("node 1's workload", Duration::from_secs(30), || {
        let running = workload.running_on(1);
        async move { running }
    })
    .await;
    for i in 0..20 {
        other.put(&format!("before/{i}"), "x", None).await.unwrap();
    }
    cluster.wait_equal_roots(Duration::from_secs(30)).await;
    let before = files(&cluster.members[0].dir);

    node1.isolate(true).await.unwrap();
    // The others keep the cluster going meanwhile.
    for i in 0..20 {
        let key = format!("during/{i}");
        eventually(
            "the majority to accept a write",
            Duration::from_secs(30),
            || {
                let (other, key) = (other.clone(), key.clone());
                async move { other.put(&key, "y", None).await.is_ok() }
            },
        )
        .await;
    }
    eventually(
        "node 1 to withhold a rebuild",
        Duration::from_secs(60),
        || {
            let node1 = node1.clone();
            async move { steps(&node1).await.iter().any(|s| s == "withhold") }
        },
    )
    .await;
    let seen = steps(&node1).await;
    let first = |step: &str| seen.iter().position(|s| s == step).unwrap_or(usize::MAX);
    assert!(
        first("warn") < first("fence")
            && first("fence") < first("nudge")
            && first("nudge") < first("withhold"),
        "the ladder, in order: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s == "rebuild"),
        "never without a peer: {seen:?}"
    );
    let report = diag(&node1).await.unwrap();
    assert!(report.escalation.fenced);
    assert!(report
        .escalation
        .withheld
        .as_deref()
        .unwrap()
        .contains("no peer is reachable"));
    assert_eq!(report.verdict, Verdict::Critical);
    // Fenced: its workload stopped, linearizable reads are refused with a
    // clear error, stale reads still work.
    assert!(
        !workload.running_on(1),
        "the isolated node's workload stopped"
    );
    match node1.get("before/1", false).await {
        Err(ClientError::Api {
            status: 503,
            message,
            ..
        }) => {
            assert!(message.contains("stale=true"), "{message}")
        }
        other => panic!("a linearizable read on a fenced node: {other:?}"),
    }
    assert_eq!(&node1.get("before/1", true).await.unwrap().bytes[..], b"x");
    // Nothing was deleted: every file it had is still there.
    let during = files(&cluster.members[0].dir);
    let lost: Vec<_> = before.difference(&during).collect();
    assert!(lost.is_empty(), "files deleted while isolated: {lost:?}");

    node1.isolate(false).await.unwrap();
    eventually("node 1 back to normal", Duration::from_secs(60), || {
        let node1 = node1.clone();
        async move {
            diag(&node1).await.is_some_and(|d| {
                d.escalation.step == "normal" && !d.escalation.fenced && d.verdict == Verdict::Ok
            })
        }
    })
    .await;
    let seen = steps(&node1).await;
    assert!(
        seen.iter().any(|s| s == "unfence") && seen.iter().any(|s| s == "recovered"),
        "{seen:?}"
    );
    // It caught up, and as the best candidate it runs the workload again.
    eventually("node 1 to catch up", Duration::from_secs(30), || {
        let node1 = node1.clone();
        async move { node1.get("during/19", true).await.is_ok() }
    })
    .await;
    eventually("node 1's workload again", Duration::from_secs(30), || {
        let running = workload.running_on(1);
        async move { running }
    })
    .await;
    for supervisor in &mut supervisors {
        supervisor.stop();
    }
    workload.check_record();
}

/// Waits until node `n`'s Raft has stopped on its bad log segment.
async fn wait_raft_stopped(client: &Client) {
    eventually(
        "Raft to stop on the bad segment",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                diag(&client).await.is_some_and(|d| {
                    d.checks
                        .iter()
                        .any(|c| c.name == "raft" && c.verdict == Verdict::Critical)
                })
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_log_is_rebuilt_from_peers_only_with_a_healthy_quorum_without_it() {
    let mut cluster = three_nodes().await;
    let leader = cluster.leader().await.unwrap();
    // A follower whose log goes bad, and the other follower.
    let bad = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let writer = cluster.members[leader].client();
    let victim = cluster.members[bad].client();
    victim.fail_log().await.unwrap();
    for i in 0..10 {
        writer.put(&format!("a/{i}"), "1", None).await.unwrap();
    }
    wait_raft_stopped(&victim).await;
    let raft_dir = cluster.members[bad].dir.join("raft");
    let segments_before: Vec<_> = std::fs::read_dir(&raft_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .map(|e| e.file_name())
        .collect();
    assert!(!segments_before.is_empty());

    // Without the third node, no healthy quorum exists without the victim
    // (the leader alone cannot commit): no rebuild, however long it waits.
    cluster.members[third].stop();
    eventually(
        "the rebuild to be withheld",
        Duration::from_secs(60),
        || {
            let victim = victim.clone();
            async move {
                diag(&victim)
                    .await
                    .is_some_and(|d| d.escalation.withheld.is_some())
            }
        },
    )
    .await;
    let seen = steps(&victim).await;
    assert!(!seen.iter().any(|s| s == "rebuild"), "{seen:?}");
    assert!(
        seen.iter().filter(|s| *s == "nudge").count() >= 2,
        "{seen:?}"
    );
    for segment in &segments_before {
        assert!(
            raft_dir.join(segment).exists(),
            "{segment:?} kept while withheld"
        );
    }

    // With the third node back, the evidence is there: rebuild, catch up,
    // and drop the old log only once ready.
    cluster.members[third].start();
    eventually(
        "the rebuild and the recovery",
        Duration::from_secs(90),
        || {
            let victim = victim.clone();
            async move {
                let seen = steps(&victim).await;
                seen.iter().any(|s| s == "rebuild")
                    && seen.iter().any(|s| s == "recovered")
                    && seen.iter().any(|s| s == "cleanup")
            }
        },
    )
    .await;
    let report = diag(&victim).await.unwrap();
    assert!(
        report.escalation.kept_logs.is_empty(),
        "{:?}",
        report.escalation
    );
    assert_eq!(report.escalation.rebuilds, 1);
    for i in 0..10 {
        writer.put(&format!("b/{i}"), "2", None).await.unwrap();
    }
    cluster.wait_equal_roots(Duration::from_secs(60)).await;
    for prefix in ["a", "b"] {
        for i in 0..10 {
            let value = victim.get(&format!("{prefix}/{i}"), true).await.unwrap();
            assert!(!value.bytes.is_empty());
        }
    }
}
