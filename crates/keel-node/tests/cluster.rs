//! In-process clusters on loopback: forming, joining, replication,
//! linearizable reads on every node, failover, equal roots.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_node::admin;
use keel_node::client::Client;
use keel_node::config::{MembershipSettings, NodeConfig, RaftSettings};
use keel_node::node::Node;

struct Member {
    dir: PathBuf,
    url: String,
    node: Node,
    /// The HTTP server's task (ended by [`stop`], so that a restart in this
    /// process can take the data directory again).
    server: tokio::task::JoinHandle<()>,
}

fn config(dir: &std::path::Path, listen: std::net::SocketAddr) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        listen,
        advertise: None,
        raft: RaftSettings {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            ..RaftSettings::default()
        },
        membership: MembershipSettings {
            promote_after_healthy_secs: 1,
        },
        ..NodeConfig::default()
    }
}

async fn start(dir: PathBuf, listener: tokio::net::TcpListener) -> Member {
    let listen = listener.local_addr().unwrap();
    let node = Node::start(config(&dir, listen)).await.unwrap();
    let serving = node.clone();
    let server = tokio::spawn(async move {
        let _ = keel_node::server::serve_on(serving, listener).await;
    });
    Member {
        dir,
        url: format!("http://{listen}"),
        node,
        server,
    }
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_fail_over_and_agree() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let base = tempfile::tempdir().unwrap();
    let founded = admin::init_cluster(&base.path().join("n1")).unwrap();
    let (listener, _) = bind().await;
    let mut members = vec![start(base.path().join("n1"), listener).await];
    eventually("node 1 ready", Duration::from_secs(20), || {
        let client = Client::new(&members[0].url);
        async move { client.ready().await.unwrap_or(false) }
    })
    .await;
    for n in 2..=3 {
        let dir = base.path().join(format!("n{n}"));
        let (listener, url) = bind().await;
        let joined = admin::join_cluster(&dir, &members[0].url, &founded.join_token, &url)
            .await
            .unwrap();
        assert_eq!(joined.node_id, n);
        members.push(start(dir, listener).await);
    }
    let first = Client::new(&members[0].url);
    eventually("three voters", Duration::from_secs(60), || {
        let first = first.clone();
        async move {
            first.cluster_status().await.is_ok_and(|s| {
                s.members.len() == 3
                    && s.members.iter().all(|m| {
                        m.membership == "voter" && m.status.as_ref().is_some_and(|st| st.ready)
                    })
            })
        }
    })
    .await;

    // Writes through every node (followers forward to the leader).
    for i in 0..60u32 {
        let client = Client::new(&members[(i % 3) as usize].url);
        client
            .put(&format!("app/k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    // Linearizable reads on every node see every acknowledged write.
    for member in &members {
        let client = Client::new(&member.url);
        for i in 0..60u32 {
            let value = client.get(&format!("app/k{i}"), false).await.unwrap();
            assert_eq!(value.bytes, format!("v{i}").as_bytes());
        }
    }
    // Compare-and-set and a rejected write.
    let client = Client::new(&members[1].url);
    let revision = client.get("app/k1", false).await.unwrap().revision;
    assert!(client
        .put("app/k1", "swapped", Some(revision))
        .await
        .is_ok());
    let stale = client
        .put("app/k1", "again", Some(revision))
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            keel_node::client::ClientError::Api { status: 412, .. }
        ),
        "{stale}"
    );

    // A prefix delete of everything is refused (it would take the cluster's
    // own keys with it: its join token, the next node id), through either
    // route, and the cluster's keys are still there afterwards.
    for prefix in ["", "/", "//"] {
        let request = keel_node::api::TxnRequest {
            compare: Vec::new(),
            ops: vec![keel_node::api::TxnOp::DeletePrefix {
                prefix: prefix.into(),
            }],
        };
        let refused = client.txn(&request).await.unwrap_err();
        assert!(
            matches!(
                refused,
                keel_node::client::ClientError::Api { status: 400, .. }
            ),
            "delete_prefix {prefix:?}: {refused}"
        );
    }
    // The key "/" (the typed client trims leading slashes; a raw request
    // need not).
    let refused = reqwest::Client::new()
        .delete(format!("{}/v1/kv//?prefix=true", members[1].url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        client.get("app/k2", false).await.unwrap().bytes,
        "v2".as_bytes()
    );
    for member in &members {
        assert_eq!(
            member.node.state_machine().cluster_id().as_deref(),
            Some(member.node.cluster_id())
        );
    }

    // Stop the leader: another takes over and writes continue.
    let leader = first.status().await.unwrap().leader.unwrap();
    let index = members.iter().position(|m| m.node.id() == leader).unwrap();
    let old = members.remove(index);
    old.node.shutdown().await.unwrap();
    let survivor = Client::new(&members[0].url);
    eventually("a new leader", Duration::from_secs(20), || {
        let survivor = survivor.clone();
        async move {
            survivor
                .status()
                .await
                .is_ok_and(|s| s.leader.is_some_and(|l| l != leader))
        }
    })
    .await;
    for i in 60..80u32 {
        survivor
            .put(&format!("app/k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    for member in &members {
        let client = Client::new(&member.url);
        assert_eq!(
            client.get("app/k79", false).await.unwrap().bytes,
            "v79".as_bytes()
        );
    }
    // Equal roots at equal revisions.
    eventually("equal roots", Duration::from_secs(10), || {
        let clients: Vec<Client> = members.iter().map(|m| Client::new(&m.url)).collect();
        async move {
            let mut roots = Vec::new();
            for client in &clients {
                let status = client.status().await.unwrap();
                roots.push((status.root_revision, status.root));
            }
            roots.windows(2).all(|w| w[0] == w[1]) && roots[0].0 > 0
        }
    })
    .await;
    for member in members {
        member.node.shutdown().await.unwrap();
        let _ = member.dir;
    }
}

/// The diagnostics' start-up check of a node.
fn startup_check(node: &Node) -> keel_node::health::diag::Check {
    let diagnostics = node.diagnostics();
    let check = diagnostics.checks.iter().find(|c| c.name == "startup");
    check.cloned().expect("a startup check")
}

/// Starts a node on `dir` and waits until it is ready.
async fn start_ready(dir: &std::path::Path) -> (Member, Client) {
    let (listener, url) = bind().await;
    let member = start(dir.to_path_buf(), listener).await;
    eventually("the node ready", Duration::from_secs(20), || {
        let client = Client::new(&url);
        async move { client.ready().await.unwrap_or(false) }
    })
    .await;
    (member, Client::new(&url))
}

/// Founds a one-node cluster in `base` and starts it.
async fn single_node(base: &std::path::Path) -> (Member, Client) {
    let dir = base.join("n1");
    admin::init_cluster(&dir).unwrap();
    start_ready(&dir).await
}

async fn stop(member: Member) {
    member.node.shutdown().await.unwrap();
    member.server.abort();
    let _ = member.server.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_damage_is_reported_until_healed_and_kept_in_the_events() {
    use keel_node::health::diag::Verdict;
    let base = tempfile::tempdir().unwrap();
    let (member, client) = single_node(base.path()).await;
    let dir = member.dir.clone();
    for i in 0..100u32 {
        let key = format!("k{i}");
        client.put(&key, format!("v{i}"), None).await.unwrap();
    }
    let clean = startup_check(&member.node);
    assert_eq!(clean.verdict, Verdict::Ok);
    assert!(
        clean.summary.contains("nothing to cut or repair"),
        "{clean:?}"
    );
    stop(member).await;

    // Damage in the middle of the store's newest pack segment: start-up
    // cuts it and what follows (kept aside), and the Raft log replays the
    // writes it held.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(newest)
            .unwrap();
        file.write_all_at(&[0xA5; 64], len / 2).unwrap();
    }
    let (member, client) = start_ready(&dir).await;
    for i in 0..100u32 {
        let value = client.get(&format!("k{i}"), false).await.unwrap();
        assert_eq!(value.bytes, format!("v{i}").as_bytes());
    }
    let healed = startup_check(&member.node);
    println!("startup check after the damage: {}", healed.summary);
    assert_eq!(healed.verdict, Verdict::Ok, "{healed:?}");
    let (found, rest) = healed.summary.split_once("; ").unwrap();
    assert!(
        found.contains("of damage from the store's pack (kept in")
            && rest == "healed: caught up and serving",
        "{healed:?}"
    );
    assert!(
        !healed.evidence["store"]["quarantined"].is_null(),
        "{healed:?}"
    );
    let events = member.node.diagnostics().escalation.events;
    assert!(
        events
            .iter()
            .any(|e| e.step == "startup" && e.message == found),
        "the finding is kept among the events: {events:?}"
    );
    stop(member).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_api_error_is_json() {
    let base = tempfile::tempdir().unwrap();
    let (member, client) = single_node(base.path()).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", client.endpoint());
    let too_big = vec![0u8; keel_node::server::REQUEST_BODY_BYTES_MAX + 1];
    let cases = [
        (http.put(url("/v1/kv/a/%FF")).body("x"), 400, "bad_request"),
        (http.put(url("/v1/kv/a//b")).body("x"), 400, "bad_request"),
        (http.put(url("/v1/kv/big")).body(too_big), 413, "too_large"),
        (
            http.post(url("/v1/kv/a")).body("x"),
            405,
            "method_not_allowed",
        ),
        (http.get(url("/v1/nothing/here")), 404, "not_found"),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.unwrap();
        let what = format!("{} {}", response.url(), response.status());
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: keel_node::api::ErrorBody = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: not the JSON error shape: {e}"));
        assert_eq!(body.error.code, code, "{what}: {}", body.error.message);
        assert!(!body.error.message.is_empty(), "{what}");
    }
    stop(member).await;
}
