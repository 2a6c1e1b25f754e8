//! Primary election and `keel run`, on a real 3-node cluster on loopback.
//!
//! Each node runs `keel run` on a shell script that records its start, a
//! tick every 100 ms and its stop (node, term, pid, time) in one shared
//! file. Randomized rounds kill -9, pause (SIGSTOP) or cut off the
//! primary's node, and the test asserts from the record that at no instant
//! did two copies run, that a new primary is elected within dead-after + 2 s,
//! and that a better node returning waits the cooldown before taking the
//! role back. Seeded: replay with KEEL_TEST_SEED.

mod harness;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::workload::Workload;
use harness::{keel, seed, wall_ms, Cluster};
use keel_node::client::Client;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Priorities set below: node 1 first, then 3, then 2.
const RANKING: [u64; 3] = [1, 3, 2];
const HEARTBEAT: Duration = Duration::from_millis(250);
const DEAD_AFTER: Duration = Duration::from_millis(1500);
const COOLDOWN: Duration = Duration::from_secs(4);
const HANDOVER: Duration = Duration::from_secs(1);
const GRACE: &str = "1s";
const ROUNDS: usize = 20;
/// The whole campaign's bound (a stuck cluster fails instead of hanging).
const TIME_LIMIT: Duration = Duration::from_secs(420);

/// The group's primary and term, asked of `client` (any node forwards to
/// the decider).
async fn primary_of(client: &Client) -> Option<(Option<u64>, u64)> {
    tokio::time::timeout(Duration::from_secs(2), client.primary("default"))
        .await
        .ok()?
        .ok()
        .map(|s| (s.primary, s.term))
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Pause,
    Isolate,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_fails_over_fenced_and_waits_the_cooldown_over_randomized_rounds() {
    let seed = seed("primary");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let mut cluster = Cluster::three_with(vec![
        "--primary-heartbeat".into(),
        format!("{}ms", HEARTBEAT.as_millis()),
        "--primary-dead-after".into(),
        format!("{}ms", DEAD_AFTER.as_millis()),
    ])
    .await;
    let base: PathBuf = cluster.base.path().to_path_buf();
    let group_set = keel()
        .args(["group", "set", "default", "--cooldown"])
        .arg(format!("{}s", COOLDOWN.as_secs()))
        .args(["--handover", &format!("{}s", HANDOVER.as_secs())])
        .args([
            "--priority",
            "1=10",
            "--priority",
            "2=30",
            "--priority",
            "3=20",
        ])
        .args(["--endpoint", &cluster.members[0].url()])
        .output()
        .unwrap();
    assert!(
        group_set.status.success(),
        "{}",
        String::from_utf8_lossy(&group_set.stderr)
    );
    let workload = Workload::new(&base.join("workload"));
    let mut supervisors: Vec<_> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| workload.supervise(&m.url(), GRACE, &base.join(format!("run{}.log", i + 1))))
        .collect();
    // Node ids are 1, 2, 3 in member order (ids are allocated in join order).
    for (i, member) in cluster.members.iter().enumerate() {
        assert_eq!(
            member.client().status().await.unwrap().node_id,
            i as u64 + 1
        );
    }
    let mut watch = keel()
        .args([
            "--json",
            "primary",
            "watch",
            "--endpoint",
            &cluster.members[2].url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    for round in 0..ROUNDS {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "campaign over its time limit"
        );
        // The newest view among the nodes (one just healed may lag).
        let (primary, term) = loop {
            let mut newest = None;
            for member in &cluster.members {
                if let Some((Some(p), t)) = primary_of(&member.client()).await {
                    if newest.is_none_or(|(_, nt)| t > nt) {
                        newest = Some((p, t));
                    }
                }
            }
            if let Some(found) = newest {
                break found;
            }
            assert!(started.elapsed() < TIME_LIMIT, "round {round}: no primary");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Usually let its workload start first; sometimes strike during the handover.
        if rng.gen_bool(0.75) {
            let what = format!("the workload of node {primary} in term {term}");
            harness::eventually(&what, Duration::from_secs(15), || {
                let instances = workload.instances();
                async move {
                    instances
                        .iter()
                        .any(|i| i.node == primary && i.term == term && !i.stopped)
                }
            })
            .await;
        }
        let linger = if rng.gen_bool(0.3) { 20 } else { 0 }; // 2 s: past the grace
        workload.set_linger(linger);
        let fault = [Fault::Kill, Fault::Pause, Fault::Isolate][rng.gen_range(0..3)];
        let victim = (primary - 1) as usize;
        println!(
            "round {round}: node {primary} (term {term}) is primary; {fault:?} it, linger {linger}"
        );
        let struck = Instant::now();
        match fault {
            Fault::Kill => cluster.members[victim].kill(),
            Fault::Pause => cluster.members[victim].pause(),
            Fault::Isolate => cluster.members[victim]
                .client()
                .isolate(true)
                .await
                .unwrap(),
        }
        // A new primary among the others, within dead-after + 2 s.
        let observer = cluster.members[(victim + 1) % 3].client();
        let mut successor = None;
        while successor.is_none() {
            if let Some((Some(p), t)) = primary_of(&observer).await {
                if p != primary && t > term {
                    successor = Some((p, t));
                }
            }
            if struck.elapsed() > DEAD_AFTER + Duration::from_secs(2) {
                // The Raft view of every node says whether an election was
                // still running (a primary decision is a Raft write).
                let mut raft = Vec::new();
                for (i, member) in cluster.members.iter().enumerate() {
                    raft.push(match member.client().status().await {
                        Ok(s) => format!(
                            "node {}: {} term {} leader {:?} last log {:?} committed {:?}",
                            i + 1,
                            s.role,
                            s.term,
                            s.leader,
                            s.last_log_index,
                            s.committed_index
                        ),
                        Err(e) => format!("node {}: {e}", i + 1),
                    });
                }
                panic!(
                    "round {round}: no new primary {:?} after {fault:?} of node {primary}; {}",
                    struck.elapsed(),
                    raft.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (successor, new_term) = successor.unwrap();
        let best_other = RANKING.into_iter().find(|n| *n != primary).unwrap();
        assert_eq!(
            successor, best_other,
            "round {round}: the best live candidate by priority takes over"
        );
        let rank = |node: u64| RANKING.iter().position(|n| *n == node).unwrap();
        println!(
            "round {round}: node {successor} elected for term {new_term} after {:?}",
            struck.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2000))).await;
        let healed_ms = wall_ms();
        match fault {
            Fault::Kill => cluster.members[victim].start(),
            Fault::Pause => cluster.members[victim].resume(),
            Fault::Isolate => {
                // The node answers local clients even while cut off.
                cluster.members[victim]
                    .client()
                    .isolate(false)
                    .await
                    .unwrap()
            }
        }
        // Usually see the better node take the role back; sometimes strike again first.
        if rank(primary) < rank(successor) && rng.gen_bool(0.8) {
            let client = cluster.members[(victim + 1) % 3].client();
            let what = format!("node {primary} to take the role back after the cooldown");
            harness::eventually(&what, COOLDOWN + Duration::from_secs(30), || {
                let client = client.clone();
                async move {
                    primary_of(&client)
                        .await
                        .is_some_and(|(p, _)| p == Some(primary))
                }
            })
            .await;
            let history = client.primary_history("default").await.unwrap();
            let takeover = history
                .iter()
                .rev()
                .find(|d| d.primary == Some(primary))
                .unwrap();
            assert!(
                takeover.at_ms >= healed_ms + COOLDOWN.as_millis() as u64,
                "round {round}: node {primary} took the role back {} ms after it returned, before the cooldown: {takeover:?}",
                takeover.at_ms as i64 - healed_ms as i64
            );
            println!(
                "round {round}: node {primary} took the role back {} ms after it returned",
                takeover.at_ms - healed_ms
            );
        }
    }

    // Heal, let the record settle, and stop every supervisor (and its command).
    cluster
        .wait_ready(&[0, 1, 2], Duration::from_secs(60))
        .await;
    for supervisor in &mut supervisors {
        supervisor.stop();
    }
    let instances = workload.check_record();
    println!(
        "{} workload instances over {ROUNDS} rounds, {} killed after the grace",
        instances.len(),
        instances.iter().filter(|i| !i.stopped).count()
    );
    assert!(
        instances.len() > ROUNDS / 2,
        "the workload ran in most rounds"
    );
    let leftovers = workload.leftover_children();
    assert!(
        leftovers.is_empty(),
        "outlived their process group: {leftovers:?}"
    );
    // The views are compared with the history read on both sides of them: a
    // node that just returned may still take the role back after its
    // cooldown, and a decision landing between the reads would make the
    // comparison meaningless, so it is retried (bounded) until none does.
    let member = &cluster.members[1];
    let (history, show, shown) = {
        let mut attempts = 0;
        loop {
            let before = member.client().primary_history("default").await.unwrap();
            let show = keel_output(&["primary", "--endpoint", &member.url()]);
            let shown = keel_output(&["primary", "history", "--endpoint", &member.url()]);
            let after = member.client().primary_history("default").await.unwrap();
            attempts += 1;
            if before.len() == after.len() || attempts == 10 {
                break (before, show, shown);
            }
            tokio::time::sleep(COOLDOWN).await;
        }
    };
    // The history matches the record: every term ran on its decided node.
    for pair in history.windows(2) {
        assert_eq!(pair[1].term, pair[0].term + 1, "terms are consecutive");
    }
    for instance in &instances {
        if let Some(decision) = history.iter().find(|d| d.term == instance.term) {
            assert_eq!(decision.primary, Some(instance.node), "{instance:?}");
        }
    }
    // The human views name the primary, the candidates and the decisions.
    let last = history.last().unwrap();
    assert!(
        show.contains(&format!(
            "primary node {}, term {}",
            last.primary.unwrap(),
            last.term
        )) && show.contains("COOLDOWN LEFT"),
        "{show}"
    );
    assert!(
        shown.lines().count() == history.len() + 1 && shown.contains(&last.reason),
        "{shown}"
    );
    // `keel primary watch` printed the changes in order.
    let _ = watch.kill();
    let output = watch.wait_with_output().unwrap();
    let terms: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| v["term"].as_u64())
        .collect();
    // (It reconnects when its node restarts, missing what happened meanwhile.)
    assert!(terms.len() > ROUNDS / 2, "watch saw the changes: {terms:?}");
    assert!(
        terms.windows(2).all(|w| w[0] < w[1]),
        "watch terms grow: {terms:?}"
    );
    println!("primary test done in {:?}", started.elapsed());
}

/// The stdout of a successful `keel` command.
fn keel_output(args: &[&str]) -> String {
    let output = keel().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "keel {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn keel_run_without_a_reachable_node_exits_2_with_a_clear_message() {
    let port = harness::free_port();
    let output = keel()
        .args([
            "run",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the local node") && stderr.contains("keel serve"),
        "{stderr}"
    );
}
