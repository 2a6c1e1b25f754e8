//! A full disk under a running 3-node cluster (issue 6, "disk full"): the
//! nodes live on one small file system, writers fill it, and then:
//! - writes fail with a clear "disk full on node N" error (507 `disk_full`)
//!   or, at worst, time out unacknowledged; nothing else goes wrong;
//! - reads keep working, linearizable ones included;
//! - when space is freed (a ballast file removed), writes are admitted again
//!   by themselves, with no operator command;
//! - every acknowledged write reads back exactly, the replicas agree, and
//!   `keel fsck` finds every node's store clean.
//!
//! The small file system is a tmpfs the test mounts (it needs root, as in
//! CI). Where mounting is impossible the test runs on the nodes' disk
//! fault injection instead (`/internal/debug/disk-limit`: the node sees a
//! file system of a given size, and its appends fail with `ENOSPC` past
//! it), and says so. Bounded in writes and time; the seed is printed.

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{eventually, seed, serial, Cluster};
use keel_node::client::{Client, ClientError};
use keel_node::health::diag::{Check, Verdict};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Size of the small file system holding all three nodes.
const FS_BYTES: u64 = 96 * 1024 * 1024;
/// A file taking part of it, removed to free space.
const BALLAST_BYTES: u64 = 24 * 1024 * 1024;
const LOW_WATERMARK: &str = "8MiB";
const RESERVE: &str = "4MiB";
/// Values are random (incompressible) and this large.
const VALUE_BYTES: usize = 48 * 1024;
const WRITERS: usize = 6;
/// Writes tried per writer, at most.
const WRITES_PER_WRITER_MAX: usize = 2_000;
/// A writer stops this many refusals after its first one.
const REFUSALS_PER_WRITER: usize = 5;
const FILL_TIMEOUT: Duration = Duration::from_secs(240);
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes`, or `None` where this process may not.
    fn mount(bytes: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallFs { dir })
    }

    /// A directory inside the file system for the cluster (a `TempDir` so
    /// the harness can own it; it is emptied before the unmount).
    fn cluster_base(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.dir.path()).unwrap()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn write_ballast(path: &Path, bytes: u64) {
    let chunk = vec![0x5au8; 1024 * 1024];
    let mut file = std::fs::File::create(path).unwrap();
    for _ in 0..bytes / chunk.len() as u64 {
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    file.sync_all().unwrap();
}

#[derive(Default)]
struct Outcome {
    acked: BTreeMap<String, Vec<u8>>,
    disk_full: Vec<String>,
    /// Unacknowledged writes that timed out or found no leader (not lost:
    /// never acknowledged).
    unavailable: Vec<String>,
}

/// Writes until every writer has been refused a few times.
async fn fill(clients: &[Client], seed: u64) -> Outcome {
    let writers = (0..WRITERS).map(|w| {
        let client = clients[w % clients.len()].clone();
        async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (w as u64 + 1));
            let mut outcome = Outcome::default();
            let started = Instant::now();
            for i in 0..WRITES_PER_WRITER_MAX {
                if outcome.disk_full.len() >= REFUSALS_PER_WRITER
                    || started.elapsed() > FILL_TIMEOUT
                {
                    break;
                }
                let key = format!("fill/w{w}/k{i}");
                let mut value = vec![0u8; VALUE_BYTES];
                rng.fill(&mut value[..]);
                match client.put(&key, value.clone(), None).await {
                    Ok(_) => {
                        outcome.acked.insert(key, value);
                    }
                    Err(ClientError::Api {
                        status: 507,
                        code,
                        message,
                        ..
                    }) => {
                        assert_eq!(code, "disk_full", "{message}");
                        outcome.disk_full.push(message);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(ClientError::Api {
                        status: 503,
                        message,
                        ..
                    }) => {
                        outcome.unavailable.push(message);
                    }
                    Err(other) => panic!("writer {w}: unexpected error on {key}: {other}"),
                }
            }
            outcome
        }
    });
    let mut total = Outcome::default();
    for outcome in futures::future::join_all(writers).await {
        total.acked.extend(outcome.acked);
        total.disk_full.extend(outcome.disk_full);
        total.unavailable.extend(outcome.unavailable);
    }
    total
}

/// The `disk` check of a node's diagnostics.
async fn disk_check(client: &Client) -> Check {
    let diagnostics = client.node_diagnostics().await.unwrap();
    diagnostics
        .checks
        .into_iter()
        .find(|c| c.name == "disk")
        .expect("a disk check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_keeps_reads_and_recovers_by_itself() {
    let _serial = serial().await;
    full_disk(SmallFs::mount(FS_BYTES)).await;
}

/// The same on the injected limit, so that the seam the fallback relies
/// on is tested wherever the suite runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_by_fault_injection_behaves_the_same() {
    let _serial = serial().await;
    full_disk(None).await;
}

async fn full_disk(small_fs: Option<SmallFs>) {
    let seed = seed("disk_full");
    let serve_args: Vec<String> = [
        "--disk-low-watermark",
        LOW_WATERMARK,
        "--disk-reserve",
        RESERVE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let injected = small_fs.is_none();
    let mut ballast: Option<PathBuf> = None;
    let cluster = match &small_fs {
        Some(fs) => {
            println!("disk_full: on a {} MiB tmpfs", FS_BYTES >> 20);
            let path = fs.dir.path().join("ballast");
            write_ballast(&path, BALLAST_BYTES);
            ballast = Some(path);
            Cluster::three_in(fs.cluster_base(), serve_args).await
        }
        None => {
            println!("disk_full: on disk fault injection (no tmpfs)");
            Cluster::three_with(serve_args).await
        }
    };
    let clients: Vec<Client> = cluster.members.iter().map(|m| m.client()).collect();
    if injected {
        // Each node sees a file system of its current use plus a third of
        // the small one (less the ballast), as if the three shared it.
        let room = (FS_BYTES - BALLAST_BYTES) / 3;
        for (client, member) in clients.iter().zip(&cluster.members) {
            let used = keel_store::fsutil::dir_size(&member.dir);
            client.set_disk_limit(Some(used + room)).await.unwrap();
        }
    }

    let mut outcome = fill(&clients, seed).await;
    // Reclaim (a Raft snapshot and a log purge) may have made room again;
    // keep writing until the disk is full for good and a node says so.
    let full_since = Instant::now();
    let mut extra = 0u64;
    loop {
        let statuses = futures::future::join_all(clients.iter().map(|c| c.disk_status())).await;
        if statuses
            .iter()
            .any(|s| s.as_ref().is_ok_and(|s| s.low_space))
        {
            break;
        }
        assert!(
            full_since.elapsed() < FILL_TIMEOUT,
            "no node entered low-space mode: {statuses:?}"
        );
        let key = format!("fill/more/k{extra}");
        let value = vec![extra as u8; VALUE_BYTES];
        extra += 1;
        match clients[0].put(&key, value.clone(), None).await {
            Ok(_) => {
                outcome.acked.insert(key, value);
            }
            Err(ClientError::Api {
                status: 507,
                message,
                ..
            }) => outcome.disk_full.push(message),
            Err(ClientError::Api {
                status: 503,
                message,
                ..
            }) => outcome.unavailable.push(message),
            Err(other) => panic!("unexpected error on {key}: {other}"),
        }
    }
    println!(
        "disk_full: {} writes acknowledged, {} refused for disk space, {} unavailable",
        outcome.acked.len(),
        outcome.disk_full.len(),
        outcome.unavailable.len()
    );
    assert!(!outcome.acked.is_empty(), "no write was acknowledged");
    assert!(
        !outcome.disk_full.is_empty(),
        "the disk never filled: writes were not refused"
    );
    for message in &outcome.disk_full {
        assert!(
            message.starts_with("disk full on node "),
            "unclear refusal: {message}"
        );
    }
    println!("disk_full: a refusal: {}", outcome.disk_full[0]);

    // Reads keep working while the disk is full: linearizable ones on the
    // leader, and on any node that holds what the leader committed (a node
    // too low on space to store new entries says so clearly); stale reads
    // everywhere, never with a wrong value.
    let mut critical = 0;
    for client in &clients {
        let disk = disk_check(client).await;
        if disk.verdict == Verdict::Critical {
            assert!(disk.summary.starts_with("disk full"), "{disk:#?}");
            critical += 1;
        }
    }
    assert!(critical > 0, "no node's diagnostics show the full disk");
    let leader = cluster.leader().await.expect("a leader");
    for (key, value) in outcome.acked.iter().take(50) {
        let read = clients[leader].get(key, false).await.unwrap();
        assert!(
            read.bytes == value[..],
            "{key}: wrong value while the disk is full"
        );
        for client in &clients {
            match client.get(key, false).await {
                Ok(read) => assert!(read.bytes == value[..], "{key}: wrong value"),
                Err(ClientError::Api {
                    status: 507,
                    message,
                    ..
                }) => {
                    assert!(message.contains("stale=true"), "{message}")
                }
                Err(other) => panic!("{key}: linearizable read failed: {other}"),
            }
            match client.get(key, true).await {
                Ok(read) => assert!(read.bytes == value[..], "{key}: wrong stale value"),
                Err(error) if error.is_not_found() => {}
                Err(other) => panic!("{key}: stale read failed: {other}"),
            }
        }
    }

    // Free space: writes resume by themselves.
    match &ballast {
        Some(path) => std::fs::remove_file(path).unwrap(),
        None => {
            for client in &clients {
                client.set_disk_limit(None).await.unwrap();
            }
        }
    }
    let probe = clients[0].clone();
    eventually("writes admitted again", RECOVERY_TIMEOUT, || {
        let probe = probe.clone();
        async move { probe.put("after/probe", b"ok".to_vec(), None).await.is_ok() }
    })
    .await;
    eventually("every node out of low-space mode", RECOVERY_TIMEOUT, || {
        let clients = clients.clone();
        async move {
            futures::future::join_all(clients.iter().map(|c| c.disk_status()))
                .await
                .iter()
                .all(|s| s.as_ref().is_ok_and(|s| !s.low_space && s.reserve_present))
        }
    })
    .await;

    for client in &clients {
        let disk = disk_check(client).await;
        assert_ne!(disk.verdict, Verdict::Critical, "{disk:#?}");
    }

    // Nothing acknowledged was lost, and the replicas agree.
    cluster.wait_equal_roots(RECOVERY_TIMEOUT).await;
    for (key, value) in &outcome.acked {
        for client in &clients {
            let read = client.get(key, true).await.unwrap();
            assert!(read.bytes == value[..], "{key}: wrong value after recovery");
        }
    }

    let mut cluster = cluster;
    for member in &mut cluster.members {
        member.stop();
    }
    for member in &cluster.members {
        harness::fsck_clean(&member.dir);
        let staging = member.dir.join(keel_store::datadir::STAGING_DIR);
        let left = std::fs::read_dir(&staging).map_or(0, |d| d.count());
        assert_eq!(left, 0, "files left in {}", staging.display());
    }
    drop(cluster);
    drop(small_fs);
}
