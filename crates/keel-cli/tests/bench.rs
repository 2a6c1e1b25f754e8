//! `keel bench kv` against a real 3-node cluster: the load generator's
//! clients share one HTTP/2 connection per node or each open their own,
//! every operation succeeds either way, and what it wrote is on every
//! replica.

mod harness;

use std::time::Duration;

use harness::{keel, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_kv_mixes_reads_and_writes_without_errors_over_either_kind_of_connection() {
    let cluster = Cluster::three().await;
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    // `node`: one shared HTTP/2 connection per node; `client`: an HTTP/1.1
    // connection per client. The first run preloads every key.
    for (connections, preload) in [("node", true), ("client", false)] {
        let endpoints = endpoints.join(",");
        let output = tokio::task::spawn_blocking(move || {
            let mut command = keel();
            command
                .args(["bench", "kv", "--json", "--endpoints", &endpoints])
                .args(["--clients", "8", "--keys", "300", "--value-size", "300"])
                .args(["--read-ratio", "0.5", "--connections", connections])
                .args(["--duration", "2s", "--warmup", "200ms", "--seed", "7"]);
            if preload {
                command.arg("--preload");
            }
            command.output().unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "keel bench kv failed: {stderr}");
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "not JSON ({e}): {}",
                    String::from_utf8_lossy(&output.stdout)
                )
            });
        assert_eq!(report["workload"]["connections"], connections, "{report}");
        let keel = &report["systems"][0];
        assert_eq!(keel["system"], "keel", "{report}");
        assert_eq!(keel["errors"], 0, "{report}");
        if preload {
            assert_eq!(keel["preload"]["keys"], 300, "{report}");
            assert_eq!(keel["preload"]["errors"], 0, "{report}");
        }
        // Every key was preloaded, so no read may miss.
        assert_eq!(keel["read_misses"], 0, "{report}");
        for kind in ["writes", "reads"] {
            let ops = keel[kind]["ops"].as_u64().unwrap();
            assert!(ops > 0, "no {kind} measured with {connections}: {report}");
        }
    }

    cluster.wait_equal_roots(Duration::from_secs(30)).await;
    for member in &cluster.members {
        for key in ["bench/0000000000", "bench/0000000299"] {
            let value = member.client().get(key, false).await.unwrap();
            assert_eq!(value.bytes.len(), 300, "{key} on {}", member.url());
        }
    }
}
