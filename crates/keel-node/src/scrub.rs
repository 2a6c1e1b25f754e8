//! The background scrub, read repair, and repair from peers.
//!
//! ## Guarantees
//! - **Scrub.** Pass after pass, every blob of the newest checkpoint and of
//!   the newest flushed root is read from disk and hashed (the walk of
//!   [`crate::walk`], shared with catch-up), at most
//!   `[scrub] rate_bytes_per_sec` on average, with a rest between passes.
//!   A missing or corrupt blob never stops a pass; beneath a repaired
//!   directory node or chunk list the walk goes on.
//! - **Repair from peers.** A damaged blob is fetched by hash from peers
//!   (`POST /internal/blobs`, the batch protocol of [`crate::fetch`]; a peer
//!   answers "not here" for a blob it lacks or holds damaged), verified on
//!   arrival and again when imported, written as a replacement, made
//!   durable (fdatasync) and read back verified. Only then is it counted as
//!   repaired, with the peer that supplied it. Bytes that do not hash to the
//!   blob's name are never written.
//! - **Critical blobs.** A blob no peer can supply intact is reported
//!   *critical* with the key paths that reach it, retried every pass, and
//!   cleared when it is repaired or when a whole pass no longer meets it (no
//!   longer referenced). It is declared only while the tree that reaches it
//!   is still the head or a retained checkpoint, so a blob that garbage
//!   collection removed from a superseded tree is never taken for damage.
//! - **Read repair.** A client read that meets a damaged blob repairs it from
//!   peers at once and reads again ([`Scrubber::read_repairing`]); only if
//!   that fails does the client get an error, naming the key and the blob.
//!   Every read verifies every blob, so the node never serves bad bytes.
//!
//! ## Not done here
//! - An object that hashes correctly but does not decode is the same on
//!   every replica; it is reported critical, and `keel fsck` handles it.
//! - Checkpoints older than the newest are not scrubbed (`keel fsck` checks
//!   any of them; after its repairs it drops those it cannot read).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, FutureExt, Shared};
use keel_store::{Hash, Store, StoreError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::ScrubSettings;
use crate::fetch::{Fetcher, FETCH_BATCH_BLOBS_MAX};
use crate::walk::{step_blocking, Damage, Found, ObjectKind, Walk, PATHS_PER_BLOB_MAX};

/// Damaged blobs repaired together during a pass.
const REPAIR_BATCH_BLOBS_MAX: usize = 64;
const _: () = assert!(REPAIR_BATCH_BLOBS_MAX <= FETCH_BATCH_BLOBS_MAX);
/// Longest the scrub spends asking peers for one batch.
const SCRUB_REPAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client read waits for repairs before it fails.
pub const READ_REPAIR_TIMEOUT: Duration = Duration::from_secs(3);
/// Blobs one client read may repair (one per retry) before it fails.
pub const READ_REPAIR_BLOBS_MAX: usize = 8;
/// Bytes read between two checks of the pace (a tenth of a second at the
/// configured rate, within these bounds).
const STEP_BYTES_MIN: u64 = 64 * 1024;
const STEP_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Time spent elsewhere (repairs, a slow disk) is credit for at most this
/// much reading at full speed.
const PACE_BURST: Duration = Duration::from_secs(1);
/// Rest after a pass that failed (an I/O error) before the next.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Repairs listed in the status (the total counts them all).
pub const RECENT_REPAIRS_MAX: usize = 32;
/// Critical blobs listed in the status (a pass counts them all).
pub const CRITICAL_BLOBS_MAX: usize = 256;

/// What caused a repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Scrub,
    Read,
}

/// One blob replaced by a verified copy from a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub blob: Hash,
    pub damage: Damage,
    /// A key path that reached it.
    pub key: String,
    /// The peer that supplied the copy.
    pub peer: String,
    pub trigger: Trigger,
    pub at_ms: u64,
}

/// A blob that no peer could supply intact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriticalBlob {
    pub blob: Hash,
    pub kind: Option<ObjectKind>,
    pub damage: Damage,
    /// Key paths that reach it (a directory's path for its nodes), at most
    /// [`PATHS_PER_BLOB_MAX`].
    pub keys: Vec<String>,
    /// How many times the latest pass reached it.
    pub keys_total: u64,
    /// Why it was not repaired (each peer's answer).
    pub reason: String,
    /// When it was first found unrepairable (ms since the Unix epoch).
    pub since_ms: u64,
    pub last_tried_ms: u64,
}

/// The work of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassProgress {
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// Blobs read and found intact (each once per pass), and their bytes.
    pub objects_verified: u64,
    pub bytes_verified: u64,
    /// Damaged blobs met, repaired, and found unrepairable.
    pub damaged_found: u64,
    pub repaired: u64,
    pub critical: u64,
}

/// The scrub as `GET /v1/scrub` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStatus {
    pub enabled: bool,
    pub rate_bytes_per_sec: u64,
    pub pause_between_passes_ms: u64,
    pub passes_completed: u64,
    pub current_pass: Option<PassProgress>,
    pub last_pass: Option<PassProgress>,
    /// Why the latest pass failed, if it did (it is retried).
    pub last_error: Option<String>,
    /// Blobs repaired since the node started (scrub and reads).
    pub repaired_total: u64,
    /// The latest repairs, newest last.
    pub recent_repairs: Vec<Repair>,
    pub critical: Vec<CriticalBlob>,
}

/// A client read that failed.
#[derive(Debug)]
pub enum ReadError {
    /// Not damage: the store's own error (an invalid key, I/O).
    Store(StoreError),
    /// A damaged blob that could not be repaired.
    Damaged {
        blob: Hash,
        damage: Damage,
        reason: String,
    },
    /// The read itself failed (its task panicked).
    Failed(String),
}

/// What one repair achieved.
#[derive(Debug, Default)]
struct RepairOutcome {
    /// Repaired blobs and the peer of each.
    repaired: HashMap<Hash, String>,
    /// Blobs that read back intact before anything was fetched (repaired
    /// meanwhile by another reader or the scrub).
    intact: HashSet<Hash>,
    /// Blobs not repaired and why.
    failed: HashMap<Hash, String>,
}

impl RepairOutcome {
    fn fixed(&self, blob: &Hash) -> bool {
        self.repaired.contains_key(blob) || self.intact.contains(blob)
    }
}

/// A read repair in flight, awaited by every read that meets the same blob.
type SharedRepair = Shared<BoxFuture<'static, Result<(), String>>>;

struct State {
    status: ScrubStatus,
    critical: BTreeMap<Hash, CriticalBlob>,
}

struct Inner {
    store: Store,
    fetcher: Fetcher,
    settings: ScrubSettings,
    state: Mutex<State>,
    /// Spreads repairs over peers.
    peer_turn: AtomicUsize,
    /// Read repairs in flight, by blob: concurrent reads of a damaged
    /// directory share one repair instead of fetching it once each.
    read_repairs: Mutex<HashMap<Hash, SharedRepair>>,
}

/// The scrub and repair service of a node. Cheap to clone.
#[derive(Clone)]
pub struct Scrubber {
    inner: Arc<Inner>,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Scrubber {
    pub fn new(store: Store, fetcher: Fetcher, settings: ScrubSettings) -> Scrubber {
        let status = ScrubStatus {
            enabled: settings.rate_bytes_per_sec > 0,
            rate_bytes_per_sec: settings.rate_bytes_per_sec,
            pause_between_passes_ms: settings.pause_between_passes_ms,
            ..ScrubStatus::default()
        };
        Scrubber {
            inner: Arc::new(Inner {
                store,
                fetcher,
                settings,
                state: Mutex::new(State {
                    status,
                    critical: BTreeMap::new(),
                }),
                peer_turn: AtomicUsize::new(0),
                read_repairs: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn status(&self) -> ScrubStatus {
        let state = self.inner.state.lock();
        let mut status = state.status.clone();
        status.critical = state.critical.values().cloned().collect();
        status
    }

    /// Starts the background scrub (unless its rate is 0); it stops when
    /// `shutdown` turns true. `peers` gives the other members' base URLs.
    pub fn spawn(
        &self,
        peers: impl Fn() -> Vec<String> + Send + Sync + 'static,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if self.inner.settings.rate_bytes_per_sec == 0 {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let pause = Duration::from_millis(this.inner.settings.pause_between_passes_ms);
            loop {
                let rest = match this.pass(&peers, &mut shutdown).await {
                    Ok(true) => pause,
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(%error, "scrub pass failed; retrying");
                        let mut state = this.inner.state.lock();
                        state.status.last_error = Some(format!("{error:#}"));
                        state.status.current_pass = None;
                        RETRY_AFTER_FAILURE.max(pause)
                    }
                };
                if !rest_or_shutdown(rest, &mut shutdown).await {
                    return;
                }
            }
        });
    }

    /// The trees a pass walks: the newest checkpoint, then the head.
    fn trees(&self) -> Vec<Hash> {
        let store = &self.inner.store;
        let mut trees: Vec<Hash> = store
            .checkpoints()
            .last()
            .map(|c| c.root)
            .into_iter()
            .collect();
        if let Some(head) = store.last_commit() {
            if !trees.contains(&head.root) {
                trees.push(head.root);
            }
        }
        trees
    }

    /// Whether `root` is still the head or a retained checkpoint (so what it
    /// references must be present).
    fn is_live(&self, root: Hash) -> bool {
        let store = &self.inner.store;
        store.last_commit().is_some_and(|c| c.root == root)
            || store.checkpoints().iter().any(|c| c.root == root)
    }

    /// One pass; `Ok(false)` when the node shut down during it.
    async fn pass(
        &self,
        peers: &(impl Fn() -> Vec<String> + Send + Sync),
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let started_at_ms = now_ms();
        self.inner.state.lock().status.current_pass = Some(PassProgress {
            started_at_ms,
            ..PassProgress::default()
        });
        let trees = self.trees();
        let mut walk = Walk::new();
        // Pushed last, walked first: the checkpoint, whose blobs stay
        // referenced longest, is the tree a shared blob is attributed to.
        for (tree, root) in trees.iter().enumerate().rev() {
            walk.push_root(*root, tree);
        }
        let mut pacer = Pacer::new(self.inner.settings.rate_bytes_per_sec);
        loop {
            let store = self.inner.store.clone();
            walk = step_blocking(walk, store, pacer.step_bytes(), REPAIR_BATCH_BLOBS_MAX).await?;
            self.with_pass(|pass| {
                pass.objects_verified = walk.objects;
                pass.bytes_verified = walk.bytes;
            });
            let delay = pacer.delay(walk.bytes, pacer.started.elapsed());
            if !rest_or_shutdown(delay, shutdown).await {
                return Ok(false);
            }
            if walk.found_count() < REPAIR_BATCH_BLOBS_MAX && !walk.is_done() {
                continue;
            }
            let found = walk.take_found();
            if found.is_empty() {
                break; // the walk is done
            }
            self.resolve(found, &mut walk, &trees, &peers()).await;
        }
        self.finish_pass(started_at_ms, &walk);
        Ok(true)
    }

    fn with_pass(&self, update: impl FnOnce(&mut PassProgress)) {
        if let Some(pass) = self.inner.state.lock().status.current_pass.as_mut() {
            update(pass);
        }
    }

    /// Repairs what a pass found; walks beneath what was repaired, and
    /// declares the rest critical.
    async fn resolve(&self, found: Vec<Found>, walk: &mut Walk, trees: &[Hash], peers: &[String]) {
        self.with_pass(|pass| pass.damaged_found += found.len() as u64);
        let wanted: Vec<(Hash, Damage, String)> = found
            .iter()
            .filter(|f| f.damage.repairable())
            .map(|f| (f.visit.hash, f.damage, f.visit.path.to_string()))
            .collect();
        let mut outcome = self
            .repair(&wanted, peers, SCRUB_REPAIR_TIMEOUT, Trigger::Scrub)
            .await;
        for found in found {
            let hash = found.visit.hash;
            if outcome.fixed(&hash) {
                walk.revisit(found.visit);
                continue;
            }
            if !self.is_live(trees[found.visit.tree]) {
                tracing::debug!(blob = %hash, "damaged blob of a superseded tree: not reported");
                continue;
            }
            let reason = match found.damage {
                Damage::Undecodable => format!(
                    "it hashes correctly but does not decode ({}); every replica holds these bytes: run `keel fsck`",
                    found.detail
                ),
                _ => outcome
                    .failed
                    .remove(&hash)
                    .unwrap_or_else(|| "not repaired".into()),
            };
            let paths = walk.paths_of(&hash);
            self.declare_critical(
                hash,
                Some(found.visit.kind),
                found.damage,
                paths.paths,
                paths.total,
                reason,
            );
            self.with_pass(|pass| pass.critical += 1);
        }
    }

    /// Records a blob no peer could supply intact.
    fn declare_critical(
        &self,
        blob: Hash,
        kind: Option<ObjectKind>,
        damage: Damage,
        keys: Vec<String>,
        keys_total: u64,
        reason: String,
    ) {
        let now = now_ms();
        let mut state = self.inner.state.lock();
        let full = state.critical.len() >= CRITICAL_BLOBS_MAX;
        if full && !state.critical.contains_key(&blob) {
            tracing::error!(%blob, ?keys, %reason, "critical blob (not listed: the list is full)");
            return;
        }
        let entry = state.critical.entry(blob).or_insert_with(|| {
            tracing::error!(%blob, ?keys, %reason, "critical: no replica holds an intact copy of this blob");
            CriticalBlob {
                blob,
                kind,
                damage,
                keys: Vec::new(),
                keys_total: 0,
                reason: String::new(),
                since_ms: now,
                last_tried_ms: now,
            }
        });
        entry.kind = kind.or(entry.kind);
        entry.damage = damage;
        entry.reason = reason;
        entry.last_tried_ms = now;
        entry.keys_total = keys_total.max(entry.keys_total);
        for key in keys {
            if entry.keys.len() < PATHS_PER_BLOB_MAX && !entry.keys.contains(&key) {
                entry.keys.push(key);
            }
        }
    }

    /// Ends a pass: critical blobs it did not meet are cleared, those it met
    /// name every key path it found for them.
    fn finish_pass(&self, started_at_ms: u64, walk: &Walk) {
        let mut state = self.inner.state.lock();
        state.critical.retain(|blob, critical| {
            let met = critical.last_tried_ms >= started_at_ms;
            if !met {
                tracing::info!(%blob, "a critical blob is no longer referenced: cleared");
            }
            met
        });
        for (blob, critical) in state.critical.iter_mut() {
            let paths = walk.paths_of(blob);
            if paths.total > 0 {
                critical.keys = paths.paths;
                critical.keys_total = paths.total;
            }
        }
        let status = &mut state.status;
        if let Some(mut pass) = status.current_pass.take() {
            pass.finished_at_ms = Some(now_ms());
            status.last_pass = Some(pass);
        }
        status.passes_completed += 1;
        status.last_error = None;
    }

    /// Fetches `wanted` (blob, damage, a key path) from peers, each verified;
    /// replaces the local copies and makes them durable. A blob counts as
    /// repaired only once synced and read back intact.
    async fn repair(
        &self,
        wanted: &[(Hash, Damage, String)],
        peers: &[String],
        timeout: Duration,
        trigger: Trigger,
    ) -> RepairOutcome {
        let mut outcome = RepairOutcome::default();
        if wanted.is_empty() {
            return outcome;
        }
        let deadline = Instant::now() + timeout;
        let store = self.inner.store.clone();
        let hashes: Vec<Hash> = wanted.iter().map(|(hash, _, _)| *hash).collect();
        let mut left = match tokio::task::spawn_blocking(move || {
            let (damaged, intact) = hashes
                .into_iter()
                .partition::<Vec<Hash>, _>(|hash| store.pack().get(hash).is_err());
            (damaged, intact)
        })
        .await
        {
            Ok((damaged, intact)) => {
                outcome.intact.extend(intact);
                damaged
            }
            Err(error) => {
                for (hash, _, _) in wanted {
                    outcome
                        .failed
                        .insert(*hash, format!("checking the local copy failed: {error}"));
                }
                return outcome;
            }
        };
        let mut answers: HashMap<Hash, Vec<String>> = HashMap::new();
        let mut imported: HashMap<Hash, String> = HashMap::new();
        let turn = self.inner.peer_turn.fetch_add(1, Ordering::Relaxed);
        for i in 0..peers.len() {
            let peer = &peers[(turn + i) % peers.len()];
            if left.is_empty() {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer =
                tokio::time::timeout(remaining, self.inner.fetcher.fetch_batch(peer, &left));
            let (got, missing) = match answer.await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => {
                    note_all(&mut answers, &left, format!("{peer}: {error}"));
                    continue;
                }
                Err(_) => {
                    note_all(&mut answers, &left, format!("{peer}: no answer in time"));
                    break;
                }
            };
            note_all(&mut answers, &missing, format!("{peer}: {NO_INTACT_COPY}"));
            if got.is_empty() {
                continue;
            }
            let store = self.inner.store.clone();
            let written = got.clone();
            match tokio::task::spawn_blocking(move || store.import_blobs(&written, true)).await {
                Ok(Ok(())) => {
                    for (hash, _) in &got {
                        imported.insert(*hash, peer.clone());
                    }
                    left.retain(|hash| !imported.contains_key(hash));
                }
                Ok(Err(error)) => {
                    let hashes: Vec<Hash> = got.iter().map(|(h, _)| *h).collect();
                    note_all(
                        &mut answers,
                        &hashes,
                        format!("writing the copy from {peer} failed: {error}"),
                    );
                }
                Err(error) => {
                    let hashes: Vec<Hash> = got.iter().map(|(h, _)| *h).collect();
                    note_all(
                        &mut answers,
                        &hashes,
                        format!("writing the copy failed: {error}"),
                    );
                }
            }
        }
        let durable = self.make_durable(&imported).await;
        for (hash, peer) in imported {
            match &durable {
                Ok(intact) if intact.contains(&hash) => {
                    outcome.repaired.insert(hash, peer);
                }
                Ok(_) => note_all(
                    &mut answers,
                    &[hash],
                    "the replaced copy did not read back intact".into(),
                ),
                Err(error) => note_all(
                    &mut answers,
                    &[hash],
                    format!("syncing the copy failed: {error}"),
                ),
            }
        }
        for (hash, damage, key) in wanted
            .iter()
            .filter(|(h, _, _)| !outcome.intact.contains(h))
        {
            match outcome.repaired.get(hash) {
                Some(peer) => self.record_repair(Repair {
                    blob: *hash,
                    damage: *damage,
                    key: key.clone(),
                    peer: peer.clone(),
                    trigger,
                    at_ms: now_ms(),
                }),
                None => {
                    let reasons = answers.remove(hash).unwrap_or_default();
                    outcome
                        .failed
                        .insert(*hash, failure_reason(&reasons, peers));
                }
            }
        }
        outcome
    }

    /// Syncs the pack, then reads every imported blob back through the
    /// verifying read path; returns those that read back intact.
    async fn make_durable(
        &self,
        imported: &HashMap<Hash, String>,
    ) -> anyhow::Result<HashSet<Hash>> {
        if imported.is_empty() {
            return Ok(HashSet::new());
        }
        let store = self.inner.store.clone();
        let hashes: Vec<Hash> = imported.keys().copied().collect();
        let intact = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            store.pack().sync()?;
            Ok(hashes
                .into_iter()
                .filter(|hash| store.pack().get(hash).is_ok())
                .collect())
        })
        .await??;
        Ok(intact)
    }

    fn record_repair(&self, repair: Repair) {
        tracing::info!(blob = %repair.blob, damage = ?repair.damage, key = %repair.key, peer = %repair.peer, trigger = ?repair.trigger, "repaired a blob from a peer");
        let mut state = self.inner.state.lock();
        state.critical.remove(&repair.blob);
        if repair.trigger == Trigger::Scrub {
            if let Some(pass) = state.status.current_pass.as_mut() {
                pass.repaired += 1;
            }
        }
        let status = &mut state.status;
        status.repaired_total += 1;
        if status.recent_repairs.len() >= RECENT_REPAIRS_MAX {
            status.recent_repairs.remove(0);
        }
        status.recent_repairs.push(repair);
    }

    /// Runs a read of this node's store: here if everything it needs is in
    /// memory (see [`keel_store::resident`]), else on a blocking thread. When it
    /// meets a damaged blob, repairs that blob from `peers` and reads again,
    /// up to [`READ_REPAIR_BLOBS_MAX`] blobs within [`READ_REPAIR_TIMEOUT`]
    /// (a value with several damaged chunks needs one round each). A blob
    /// that cannot be repaired fails the read and is reported critical.
    pub async fn read_repairing<T, F>(
        &self,
        peers: &[String],
        key: &str,
        read: F,
    ) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: Fn() -> Result<T, StoreError> + Send + Sync + 'static,
    {
        let read = Arc::new(read);
        let deadline = Instant::now() + READ_REPAIR_TIMEOUT;
        let mut repaired = Vec::new();
        loop {
            let attempt = match keel_store::resident::resident(|| read()) {
                Some(attempt) => attempt,
                None => {
                    let read = read.clone();
                    tokio::task::spawn_blocking(move || read())
                        .await
                        .map_err(|error| ReadError::Failed(error.to_string()))?
                }
            };
            let error = match attempt {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some((blob, damage)) = Damage::of(&error) else {
                return Err(ReadError::Store(error));
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let reason = if !damage.repairable() {
                "it hashes correctly but does not decode: every replica holds these bytes".into()
            } else if repaired.contains(&blob)
                || repaired.len() >= READ_REPAIR_BLOBS_MAX
                || remaining.is_zero()
            {
                format!(
                    "read repair gave up after repairing {} blob(s) within {READ_REPAIR_TIMEOUT:?}",
                    repaired.len()
                )
            } else {
                match self
                    .repair_for_read(blob, damage, key, peers, remaining)
                    .await
                {
                    Ok(()) => {
                        repaired.push(blob);
                        continue;
                    }
                    Err(reason) => {
                        let keys = vec![key.to_string()];
                        self.declare_critical(blob, None, damage, keys, 1, reason.clone());
                        reason
                    }
                }
            };
            return Err(ReadError::Damaged {
                blob,
                damage,
                reason,
            });
        }
    }
}

impl Scrubber {
    /// Repairs one blob a read met, sharing the repair with every other
    /// read that meets it meanwhile. The repair runs on its own task, so a
    /// client that goes away does not cancel it for the others.
    async fn repair_for_read(
        &self,
        blob: Hash,
        damage: Damage,
        key: &str,
        peers: &[String],
        timeout: Duration,
    ) -> Result<(), String> {
        let shared = {
            let mut in_flight = self.inner.read_repairs.lock();
            in_flight
                .entry(blob)
                .or_insert_with(|| {
                    let (this, peers) = (self.clone(), peers.to_vec());
                    let wanted = [(blob, damage, key.to_string())];
                    // Removes its own entry when done; the map's lock,
                    // held here, orders that after this insertion.
                    let task = tokio::spawn(async move {
                        let mut outcome =
                            this.repair(&wanted, &peers, timeout, Trigger::Read).await;
                        this.inner.read_repairs.lock().remove(&blob);
                        if outcome.fixed(&blob) {
                            Ok(())
                        } else {
                            Err(outcome.failed.remove(&blob).unwrap_or_default())
                        }
                    });
                    async move {
                        task.await
                            .unwrap_or_else(|e| Err(format!("the repair task failed: {e}")))
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        tokio::time::timeout(timeout, shared)
            .await
            .unwrap_or_else(|_| Err(format!("not repaired within {timeout:?}")))
    }
}

/// A peer's answer for a blob it lacks or holds damaged.
const NO_INTACT_COPY: &str = "no intact copy";

/// Why a blob was not repaired, from every peer's answer: when each peer
/// said it has no intact copy, no replica has one.
fn failure_reason(answers: &[String], peers: &[String]) -> String {
    let absent = answers
        .iter()
        .filter(|a| a.ends_with(NO_INTACT_COPY))
        .count();
    if peers.is_empty() {
        "there is no peer to ask (a single replica)".into()
    } else if absent == peers.len() {
        format!(
            "no replica holds an intact copy (asked {})",
            peers.join(", ")
        )
    } else {
        format!("no peer supplied an intact copy ({})", answers.join("; "))
    }
}

fn note_all(answers: &mut HashMap<Hash, Vec<String>>, hashes: &[Hash], answer: String) {
    for hash in hashes {
        answers.entry(*hash).or_default().push(answer.clone());
    }
}

/// Sleeps `rest`; false when the node shuts down first.
async fn rest_or_shutdown(rest: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    if rest.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(rest) => true,
        _ = shutdown.wait_for(|stopped| *stopped) => false,
    }
}

/// Keeps a pass to its rate: after reading `bytes` since the pass began,
/// waits until they are due.
struct Pacer {
    rate_bytes_per_sec: u64,
    started: Instant,
    /// Time not counted as credit (see [`PACE_BURST`]).
    forgiven: Duration,
}

impl Pacer {
    fn new(rate_bytes_per_sec: u64) -> Pacer {
        assert!(rate_bytes_per_sec > 0, "a disabled scrub does not pace");
        Pacer {
            rate_bytes_per_sec,
            started: Instant::now(),
            forgiven: Duration::ZERO,
        }
    }

    /// Bytes to read before the next check: a tenth of a second's worth.
    fn step_bytes(&self) -> u64 {
        (self.rate_bytes_per_sec / 10).clamp(STEP_BYTES_MIN, STEP_BYTES_MAX)
    }

    /// How long to wait, `elapsed` after the start, having read `bytes`.
    fn delay(&mut self, bytes: u64, elapsed: Duration) -> Duration {
        let due = Duration::from_secs_f64(bytes as f64 / self.rate_bytes_per_sec as f64);
        let counted = elapsed.saturating_sub(self.forgiven);
        if counted > due + PACE_BURST {
            self.forgiven += counted - due - PACE_BURST;
        }
        due.saturating_sub(elapsed.saturating_sub(self.forgiven))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_keeps_the_rate_and_limits_bursts() {
        let mut pacer = Pacer::new(1_000);
        assert_eq!(pacer.step_bytes(), STEP_BYTES_MIN);
        assert_eq!(pacer.delay(500, Duration::ZERO), Duration::from_millis(500));
        assert_eq!(
            pacer.delay(500, Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        assert_eq!(pacer.delay(1_000, Duration::from_secs(1)), Duration::ZERO);
        // Ten idle seconds (a repair) buy one second at full speed, not ten.
        assert_eq!(pacer.delay(1_000, Duration::from_secs(11)), Duration::ZERO);
        assert_eq!(
            pacer.delay(3_000, Duration::from_secs(11)),
            Duration::from_secs(1)
        );
        assert_eq!(Pacer::new(u64::MAX).step_bytes(), STEP_BYTES_MAX);
    }

    #[test]
    fn no_replica_holds_it_only_when_every_peer_said_so() {
        let peers = vec!["http://a".to_string(), "http://b".to_string()];
        let absent = |peer: &str| format!("{peer}: {NO_INTACT_COPY}");
        let reason = failure_reason(&[absent("http://a"), absent("http://b")], &peers);
        assert_eq!(
            reason,
            "no replica holds an intact copy (asked http://a, http://b)"
        );
        let unreachable = "http://b: error sending request".to_string();
        let reason = failure_reason(&[absent("http://a"), unreachable], &peers);
        assert!(
            reason.starts_with("no peer supplied an intact copy ("),
            "{reason}"
        );
        assert!(failure_reason(&[], &[]).contains("no peer to ask"));
    }
}
