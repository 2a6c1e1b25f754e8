//! A multi-process cluster on loopback for fault tests: real `keel serve`
//! processes that tests kill (SIGKILL), restart, damage and wipe.
#![allow(dead_code)]

pub mod linear;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_node::client::Client;

pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Member {
    pub dir: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Extra `keel serve` flags.
    pub serve_args: Vec<String>,
    starts: u32,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url())
    }

    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.dir.display()
        );
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = keel()
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--promote-after-secs",
                "2",
            ])
            .args(&self.serve_args)
            .env("KEEL_LOG", "info,openraft=error")
            .env("KEEL_FAULT_INJECTION", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: a crash at any instant.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the node hangs (a stalled VM, a long GC pause).
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
        }
    }

    /// SIGCONT after [`Member::pause`].
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub base: tempfile::TempDir,
    pub members: Vec<Member>,
    pub token: String,
    /// Extra `keel serve` flags for every member.
    pub serve_args: Vec<String>,
}

impl Drop for Cluster {
    /// On failure, show what every node logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for member in &self.members {
                let text = member.log_text();
                let lines: Vec<&str> = text.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    if line.contains("panicked at") {
                        eprintln!(
                            "---- PANIC in {}: {}",
                            member.url(),
                            lines[i..(i + 4).min(lines.len())].join(" | ")
                        );
                    }
                }
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- log of {} ({}):", member.url(), member.dir.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Polls `check` until it holds, or panics after `timeout` naming `what`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
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
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

impl Cluster {
    /// A fresh data directory (not started) for member `n`.
    pub fn new_member(&self, n: usize) -> Member {
        Member {
            dir: self.base.path().join(format!("n{n}")),
            port: free_port(),
            child: None,
            log: self.base.path().join(format!("n{n}.log")),
            serve_args: self.serve_args.clone(),
            starts: 0,
        }
    }

    /// Founds a cluster on member 1; `prepare` runs on its data directory
    /// before its first start (offline preloading).
    pub async fn found(prepare: impl FnOnce(&Path)) -> Cluster {
        Cluster::found_with(Vec::new(), prepare).await
    }

    /// [`Cluster::found`], with extra `keel serve` flags for every member.
    pub async fn found_with(serve_args: Vec<String>, prepare: impl FnOnce(&Path)) -> Cluster {
        Cluster::found_in(tempfile::tempdir().unwrap(), serve_args, prepare).await
    }

    /// [`Cluster::found_with`], with every member's data directory and log
    /// under `base` (a small file system, say).
    pub async fn found_in(
        base: tempfile::TempDir,
        serve_args: Vec<String>,
        prepare: impl FnOnce(&Path),
    ) -> Cluster {
        let mut cluster = Cluster {
            base,
            members: Vec::new(),
            token: String::new(),
            serve_args,
        };
        let mut first = cluster.new_member(1);
        let output = keel()
            .args(["--json", "init", "--data-dir"])
            .arg(&first.dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let founded: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        cluster.token = founded["join_token"].as_str().unwrap().to_string();
        prepare(&first.dir);
        first.start();
        cluster.members.push(first);
        cluster.wait_ready(&[0], READY_TIMEOUT).await;
        cluster
    }

    /// Adds a member through `keel join`, starts it and waits until it is a ready voter.
    pub async fn add_member(&mut self) -> usize {
        let n = self.members.len() + 1;
        let mut member = self.new_member(n);
        self.join(&member);
        member.start();
        self.members.push(member);
        let index = self.members.len() - 1;
        self.wait_voters(self.members.len(), READY_TIMEOUT).await;
        index
    }

    /// Runs `keel join` for `member` against the first running member.
    pub fn join(&self, member: &Member) {
        let endpoint = self
            .members
            .iter()
            .find(|m| m.is_running())
            .expect("a running member")
            .url();
        let output = keel()
            .args(["join", "--data-dir"])
            .arg(&member.dir)
            .args(["--endpoint", &endpoint, "--token", &self.token])
            .args(["--listen", &format!("127.0.0.1:{}", member.port)])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "join failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub async fn three() -> Cluster {
        Cluster::three_with(Vec::new()).await
    }

    pub async fn three_with(serve_args: Vec<String>) -> Cluster {
        Cluster::three_in(tempfile::tempdir().unwrap(), serve_args).await
    }

    /// Three members, everything under `base` (see [`Cluster::found_in`]).
    pub async fn three_in(base: tempfile::TempDir, serve_args: Vec<String>) -> Cluster {
        let mut cluster = Cluster::found_in(base, serve_args, |_| {}).await;
        cluster.add_member().await;
        cluster.add_member().await;
        cluster
    }

    pub async fn wait_ready(&self, indexes: &[usize], timeout: Duration) {
        for &i in indexes {
            let client = self.members[i].client();
            let what = format!(
                "node at {} ready (log {})",
                self.members[i].url(),
                self.members[i].log.display()
            );
            eventually(&what, timeout, || {
                let client = client.clone();
                async move { client.ready().await.unwrap_or(false) }
            })
            .await;
        }
    }

    /// Waits until `count` voters are all ready.
    pub async fn wait_voters(&self, count: usize, timeout: Duration) {
        let clients: Vec<Client> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.client())
            .collect();
        eventually(&format!("{count} ready voters"), timeout, || {
            let clients = clients.clone();
            async move {
                for client in &clients {
                    if let Ok(status) = client.cluster_status().await {
                        let ready_voters = status
                            .members
                            .iter()
                            .filter(|m| {
                                m.membership == "voter"
                                    && m.status.as_ref().is_some_and(|s| s.ready)
                            })
                            .count();
                        return ready_voters == count && status.members.len() == count;
                    }
                }
                false
            }
        })
        .await;
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// Index of the current leader, asking any running member.
    pub async fn leader(&self) -> Option<usize> {
        for &i in &self.running() {
            if let Ok(status) = self.members[i].client().status().await {
                if let Some(leader) = status.leader {
                    for &j in &self.running() {
                        if let Ok(s) = self.members[j].client().status().await {
                            if s.node_id == leader {
                                return Some(j);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Waits until every running member reports the same root at the same
    /// revision, with all it applied flushed into that root, and returns it.
    /// (Flushed roots alone can agree on an older state while a replica has
    /// yet to apply what the others did: after a full disk postponed every
    /// node's flushes, say.)
    pub async fn wait_equal_roots(&self, timeout: Duration) -> (u64, String) {
        let clients: Vec<Client> = self
            .running()
            .iter()
            .map(|&i| self.members[i].client())
            .collect();
        let agreed;
        let started = Instant::now();
        loop {
            // (applied revision, flushed revision, flushed root) per node.
            let mut states = Vec::new();
            for client in &clients {
                if let Ok(status) = client.status().await {
                    states.push((
                        status.revision,
                        status.root_revision,
                        status.root.unwrap_or_default(),
                    ));
                }
            }
            if states.len() == clients.len()
                && states
                    .iter()
                    .all(|(applied, flushed, _)| applied == flushed)
                && states.windows(2).all(|w| w[0] == w[1])
                && states[0].1 > 0
            {
                agreed = (states[0].1, states[0].2.clone());
                break;
            }
            assert!(
                started.elapsed() < timeout,
                "replicas did not converge on one fully flushed root (applied, flushed, root): {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        agreed
    }
}

/// Asserts that `keel fsck` finds the store in `dir` clean (exit 0).
pub fn fsck_clean(dir: &Path) {
    let output = keel()
        .args(["fsck", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fsck of {} found problems:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One cluster at a time within a test binary: three processes already
/// fill two cores.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A seed from `KEEL_TEST_SEED` or random, printed for replay.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{test} seed: {seed} (replay with KEEL_TEST_SEED={seed})");
    seed
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
