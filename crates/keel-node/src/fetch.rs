//! Catch-up by root hash: fetch the blobs under a root that this node lacks,
//! from any peer, verifying every one. The tree is walked by
//! [`crate::walk`] (every present blob read and hashed); the scrub reuses
//! the batch request below to repair damaged blobs.
//!
//! The Kura lesson, kept as invariants:
//! - one failed blob never aborts a pass: it is recorded, the pass goes on
//!   with everything else, and the next pass retries what failed (from the
//!   next peer), so every pass makes forward progress while data exists
//!   anywhere;
//! - a root is complete, and the node ready, only after a fully clean pass;
//! - incoming data goes through `staging/` and the staging file is removed
//!   on every path (it is also emptied at start-up);
//! - a peer that does not hold a blob answers "not here" for it, and the
//!   fetch skips it cleanly.
//!
//! Wire format of `POST /internal/blobs`: the request is a postcard list of
//! hashes; the answer is, for each hash in order, `found:u8 len:u32le bytes`.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use keel_store::fsutil::StagingFile;
use keel_store::object::BLOB_BYTES_MAX;
use keel_store::{Hash, Store};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use crate::network::CLUSTER_HEADER;
use crate::types::encode;
use crate::walk::{step_blocking, Walk};

/// Hashes asked for in one request.
pub const FETCH_BATCH_BLOBS_MAX: usize = 256;
/// Longest wait for one batch.
const FETCH_BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between passes that still had failures.
const PASS_BACKOFF_MIN: Duration = Duration::from_millis(200);
const PASS_BACKOFF_MAX: Duration = Duration::from_secs(5);
pub const PATH_BLOBS: &str = "/internal/blobs";

/// A batch's answer: the verified blobs, and the hashes not obtained.
pub(crate) type BatchAnswer = (Vec<(Hash, Bytes)>, Vec<Hash>);

/// Progress of fetching one root.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct FetchProgress {
    pub root: String,
    pub complete: bool,
    pub passes: u32,
    pub blobs_fetched: u64,
    pub bytes_fetched: u64,
    /// Blobs still missing after the latest pass.
    pub missing: usize,
    /// Failures of the latest pass (blob: reason), at most a few.
    pub recent_failures: Vec<String>,
    pub started_ms_ago: u64,
}

struct Job {
    progress: Mutex<FetchProgress>,
    started: Instant,
    done: Notify,
    /// Keeps garbage collection out while fetched blobs are referenced by
    /// nothing (until the snapshot is installed and the job finished).
    hold: Mutex<Option<keel_store::GcHold>>,
}

/// Fetches roots from peers; one job per root, shared by every caller.
#[derive(Clone)]
pub struct Fetcher {
    store: Store,
    http: reqwest::Client,
    cluster_id: Arc<String>,
    faults: crate::faults::Faults,
    jobs: Arc<Mutex<HashMap<Hash, Arc<Job>>>>,
    /// The last root fetched completely: (root, wall-clock ms).
    last_complete: Arc<Mutex<Option<(Hash, u64)>>>,
}

impl Fetcher {
    pub fn new(
        store: Store,
        http: reqwest::Client,
        cluster_id: String,
        faults: crate::faults::Faults,
    ) -> Fetcher {
        Fetcher {
            store,
            http,
            cluster_id: Arc::new(cluster_id),
            faults,
            jobs: Arc::new(Mutex::new(HashMap::new())),
            last_complete: Arc::new(Mutex::new(None)),
        }
    }

    /// Makes sure every blob under `root` is present, fetching from `peers`
    /// (base URLs) in the background; waits at most `wait` and reports.
    pub async fn ensure(&self, root: Hash, peers: Vec<String>, wait: Duration) -> FetchProgress {
        let job = {
            let mut jobs = self.jobs.lock();
            // A complete job nobody finished (its snapshot was superseded)
            // expires, releasing its hold on garbage collection.
            jobs.retain(|_, job| {
                !job.progress.lock().complete || job.started.elapsed() < Duration::from_secs(600)
            });
            jobs.entry(root)
                .or_insert_with(|| {
                    let job = Arc::new(Job {
                        progress: Mutex::new(FetchProgress {
                            root: root.to_string(),
                            ..FetchProgress::default()
                        }),
                        started: Instant::now(),
                        done: Notify::new(),
                        hold: Mutex::new(None),
                    });
                    let this = self.clone();
                    let running = job.clone();
                    tokio::spawn(async move { this.run(root, running, peers).await });
                    job
                })
                .clone()
        };
        let notified = job.done.notified();
        if !job.progress.lock().complete {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        let mut progress = job.progress.lock().clone();
        progress.started_ms_ago = job.started.elapsed().as_millis() as u64;
        progress
    }

    /// Fetch jobs not yet complete.
    pub fn in_progress(&self) -> Vec<FetchProgress> {
        self.jobs
            .lock()
            .values()
            .map(|job| {
                let mut p = job.progress.lock().clone();
                p.started_ms_ago = job.started.elapsed().as_millis() as u64;
                p
            })
            .filter(|p| !p.complete)
            .collect()
    }

    /// The last root whose every blob was fetched and synced (a clean
    /// pass), with when (ms since the Unix epoch).
    pub fn last_complete(&self) -> Option<(Hash, u64)> {
        *self.last_complete.lock()
    }

    /// Forgets a root's job (after its snapshot was installed), letting
    /// garbage collection run again.
    pub fn finish(&self, root: &Hash) {
        self.jobs.lock().remove(root);
    }

    async fn run(self, root: Hash, job: Arc<Job>, peers: Vec<String>) {
        let store = self.store.clone();
        *job.hold.lock() = tokio::task::spawn_blocking(move || store.hold_gc())
            .await
            .ok();
        let mut backoff = PASS_BACKOFF_MIN;
        let mut peer_turn = 0usize;
        loop {
            let outcome = self.pass(root, &job, &peers, &mut peer_turn).await;
            let complete = {
                let mut progress = job.progress.lock();
                progress.passes += 1;
                match &outcome {
                    Ok(missing) => {
                        progress.missing = *missing;
                        progress.complete = *missing == 0;
                    }
                    Err(error) => progress.recent_failures = vec![error.to_string()],
                }
                progress.complete
            };
            if complete {
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.pack().sync()).await {
                    Ok(Ok(())) => {
                        tracing::info!(%root, "fetched every blob of the snapshot");
                        *self.last_complete.lock() = Some((root, crate::health::wall_ms()));
                        job.done.notify_waiters();
                        return;
                    }
                    other => {
                        tracing::warn!(?other, "syncing fetched blobs failed; fetching again");
                        job.progress.lock().complete = false;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(PASS_BACKOFF_MAX);
        }
    }

    /// One pass over the tree: fetch what is missing, keep going past every
    /// failure. Returns how many blobs were still missing at the end.
    async fn pass(
        &self,
        root: Hash,
        job: &Job,
        peers: &[String],
        peer_turn: &mut usize,
    ) -> anyhow::Result<usize> {
        anyhow::ensure!(!peers.is_empty(), "no peer to fetch from");
        let mut walk = Walk::new();
        walk.push_root(root, 0);
        let mut still_missing = 0usize;
        let mut failures = Vec::new();
        loop {
            walk = step_blocking(walk, self.store.clone(), u64::MAX, FETCH_BATCH_BLOBS_MAX).await?;
            let found = walk.take_found();
            if found.is_empty() {
                break; // a step ends early only when it has found a batch
            }
            let (wanted, unfetchable): (Vec<_>, Vec<_>) =
                found.into_iter().partition(|f| f.damage.repairable());
            for found in unfetchable {
                still_missing += 1;
                failures.push(format!("{}: {}", found.visit.hash, found.detail));
            }
            if wanted.is_empty() {
                continue;
            }
            let peer = &peers[*peer_turn % peers.len()];
            *peer_turn += 1;
            let hashes: Vec<Hash> = wanted.iter().map(|f| f.visit.hash).collect();
            match self.fetch_batch(peer, &hashes).await {
                Ok((got, missing)) => {
                    {
                        let mut progress = job.progress.lock();
                        progress.blobs_fetched += got.len() as u64;
                        progress.bytes_fetched +=
                            got.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                    }
                    let fetched: HashSet<Hash> = got.iter().map(|(h, _)| *h).collect();
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || store.import_blobs(&got, true)).await??;
                    for found in wanted {
                        if fetched.contains(&found.visit.hash) {
                            // Now present: look inside it on this same pass.
                            walk.revisit(found.visit);
                        }
                    }
                    for hash in missing {
                        still_missing += 1;
                        failures.push(format!("{hash}: not at {peer}"));
                    }
                }
                Err(error) => {
                    still_missing += hashes.len();
                    failures.push(format!("{} blobs from {peer}: {error}", hashes.len()));
                }
            }
            job.progress.lock().missing = still_missing;
        }
        failures.truncate(5);
        job.progress.lock().recent_failures = failures;
        Ok(still_missing)
    }

    /// Asks one peer for a batch; the answer streams through a staging file.
    /// Returns the verified blobs and the hashes the peer did not have.
    pub(crate) async fn fetch_batch(
        &self,
        peer: &str,
        hashes: &[Hash],
    ) -> anyhow::Result<BatchAnswer> {
        anyhow::ensure!(!self.faults.isolated(), "cut off by fault injection");
        let response = self
            .http
            .post(format!("{}{PATH_BLOBS}", peer.trim_end_matches('/')))
            .header(CLUSTER_HEADER, self.cluster_id.as_str())
            .timeout(FETCH_BATCH_TIMEOUT)
            .body(encode(&hashes.to_vec()))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "answered {}",
            response.status()
        );
        let staging = self.store.dir().join(keel_store::datadir::STAGING_DIR);
        let mut file = StagingFile::create(&staging, "fetch")?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk?)?;
        }
        file.file().flush()?;
        let reader = std::fs::File::open(file.path())?;
        let expected = hashes.to_vec();
        // Parsing reads the whole staging file: do it off the async threads.
        let parsed =
            tokio::task::spawn_blocking(move || parse_blobs(BufReader::new(reader), &expected))
                .await??;
        drop(file); // removes the staging file
        Ok(parsed)
    }
}

/// Reads the answer to a batch request, verifying every blob.
fn parse_blobs(mut reader: impl Read, expected: &[Hash]) -> anyhow::Result<BatchAnswer> {
    let mut got = Vec::new();
    let mut missing = Vec::new();
    for hash in expected {
        let mut header = [0u8; 5];
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
        if header[0] == 0 {
            missing.push(*hash);
            continue;
        }
        anyhow::ensure!(len <= BLOB_BYTES_MAX, "blob {hash} claims {len} bytes");
        let mut bytes = vec![0u8; len];
        reader.read_exact(&mut bytes)?;
        if Hash::of(&bytes) == *hash {
            got.push((*hash, Bytes::from(bytes)));
        } else {
            // A damaged copy at the peer: try it elsewhere next pass.
            missing.push(*hash);
        }
    }
    Ok((got, missing))
}

/// Serves a batch request from the local store: each blob verified, or
/// "not here" when it is missing or damaged locally.
pub fn serve_blobs(store: &Store, hashes: &[Hash]) -> Vec<u8> {
    let mut out = Vec::new();
    for hash in hashes.iter().take(FETCH_BATCH_BLOBS_MAX) {
        match store.pack().get(hash) {
            Ok(bytes) => {
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            Err(_) => {
                out.push(0);
                out.extend_from_slice(&0u32.to_le_bytes());
            }
        }
    }
    out
}
