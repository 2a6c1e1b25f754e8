//! The state machine: an adapter between Raft's applied entries and the store.
//!
//! - Applying an entry is a store commit in memory; the store is flushed
//!   (not synced) every [`FLUSH_OPS_MAX`] operations or [`FLUSH_INTERVAL`],
//!   and each flush records the applied log id and membership in the same
//!   commit record as the root they produced, so after a crash the store
//!   and its applied position always agree; Raft re-applies the rest from
//!   its durable log. For the same reason a flush that meets a full disk is
//!   only postponed (the store is left as it was, see `keel_store::segment`).
//! - A snapshot is a checkpoint (durable): its data is only a manifest
//!   `{root, revision, applied, membership}`. Logs are purged only up to a
//!   snapshot, so every entry after the durable state is still in the log.
//!   The checkpoint is begun in the state machine's task (a consistent
//!   point: the store writes what was applied) and made durable by the
//!   builder, beside later applies; Raft purges only after the builder
//!   returned.
//! - Installing a snapshot adopts a root hash whose blobs the receiver
//!   fetched beforehand (see `fetch`), at exactly the sender's revision.
//! - Revisions are deterministic: every replica numbers transactions the same.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_store::{Durability, PendingCheckpoint, Store, Txn};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

use crate::primary::rules::{GroupConfig, GroupState, DEFAULT_GROUP};
use crate::types::{
    decode, encode, AppliedMeta, Entry, LogId, Request, Response, SnapshotManifest, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};
use crate::watch::EventHub;

/// Operations applied between two (unsynced) flushes of the store, at most.
/// A flush writes every directory node changed since the last one, so under
/// random writes its cost per operation falls as the interval grows: with
/// 100,000 keys, about 10 µs per put every 14,000 puts, 1 µs every 100,000.
/// Unflushed entries cost nothing in durability (they are in the Raft log),
/// only memory and replay time after a crash.
pub const FLUSH_OPS_MAX: u64 = 100_000;
/// Time between two flushes of a busy store, at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// Where the cluster keeps its own keys; clients may not read or write there.
pub const RESERVED_PREFIX: &str = ".keel";
const NEXT_NODE_ID_KEY: &str = ".keel/cluster/next-node-id";
const CLUSTER_ID_KEY: &str = ".keel/cluster/id";
const TOKEN_HASH_KEY: &str = ".keel/cluster/join-token-hash";
const GROUPS_DIR: &str = ".keel/groups";

fn group_key(group: &str, what: &str) -> String {
    format!("{GROUPS_DIR}/{group}/{what}")
}

/// The founding node is 1; joiners get ids from 2 on.
const FIRST_JOINER_ID: u64 = 2;

struct State {
    applied: AppliedMeta,
    current: Option<(SnapshotMeta, SnapshotManifest)>,
    ops_since_flush: u64,
    last_flush: Instant,
    last_apply: Instant,
}

impl State {
    fn flushed(&mut self) {
        self.ops_since_flush = 0;
        self.last_flush = Instant::now();
    }
}

struct Inner {
    store: Store,
    state: Mutex<State>,
    events: EventHub,
    /// The cluster's own keys (under `.keel/`) and their values, read again
    /// only after an apply changed them (`None`). Reading them through
    /// `Store::snapshot` each time would publish the writer's tree, and the
    /// batches applied after a publish copy every node they touch: the
    /// primary decider reads them every 250 ms, which cost the leader a
    /// copied leaf for most writes.
    reserved: Mutex<Option<Arc<BTreeMap<String, Bytes>>>>,
}

/// The Raft state machine; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

fn sm_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(error.to_string()),
    )
}

impl StateMachine {
    /// Wraps a store opened with deterministic revisions; the applied state
    /// comes from the newest commit record's metadata.
    pub fn new(store: Store) -> anyhow::Result<StateMachine> {
        let applied = match store.last_commit() {
            Some(commit) if !commit.meta.is_empty() => decode::<AppliedMeta>(&commit.meta)
                .map_err(|e| {
                    anyhow::anyhow!("the store's applied Raft state is unreadable: {e}")
                })?,
            _ => AppliedMeta::default(),
        };
        // A snapshot must cover what is applied: Raft purges its log up to
        // the applied position when the log ends before it (after damage was
        // cut from the log), and a purge may never pass the snapshot.
        let covered = store
            .checkpoints()
            .last()
            .and_then(|c| decode::<AppliedMeta>(&c.meta).ok())
            .and_then(|m| m.last_applied);
        if applied.last_applied > covered {
            store.flush(Durability::Sync, Some(encode(&applied)))?;
            store.checkpoint()?;
        }
        let events = EventHub::new(store.revision());
        Ok(StateMachine {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(State {
                    applied,
                    current: None,
                    ops_since_flush: 0,
                    last_flush: Instant::now(),
                    last_apply: Instant::now(),
                }),
                events,
                reserved: Mutex::new(None),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn events(&self) -> &EventHub {
        &self.inner.events
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.inner.state.lock().applied.last_applied
    }

    /// Flushes applied changes (not synced) when the store has been idle a
    /// little while, so that every replica soon states its root hash.
    pub fn flush_if_idle(&self, idle: Duration) -> Result<(), keel_store::StoreError> {
        let mut state = self.inner.state.lock();
        if state.ops_since_flush == 0 || state.last_apply.elapsed() < idle {
            return Ok(());
        }
        self.flush_locked(&mut state, Durability::Buffered)
    }

    /// Flushes every applied change durably, with the applied position
    /// (at shutdown, once Raft has stopped applying).
    pub fn flush_durable(&self) -> Result<(), keel_store::StoreError> {
        let mut state = self.inner.state.lock();
        self.flush_locked(&mut state, Durability::Sync)
    }

    fn flush_locked(
        &self,
        state: &mut State,
        durability: Durability,
    ) -> Result<(), keel_store::StoreError> {
        self.inner
            .store
            .flush(durability, Some(encode(&state.applied)))?;
        state.flushed();
        Ok(())
    }

    /// The snapshot Raft has now: the newest built or installed, else the
    /// newest checkpoint's (after a restart).
    fn current_snapshot(&self) -> Option<(SnapshotMeta, SnapshotManifest)> {
        let current = self.inner.state.lock().current.clone();
        current.or_else(|| self.manifest_from_checkpoint())
    }

    /// The cluster id recorded in the replicated state, if any.
    pub fn cluster_id(&self) -> Option<String> {
        self.read_reserved(CLUSTER_ID_KEY)
    }

    /// Whether `token` is the cluster's join token.
    pub fn token_matches(&self, token: &str) -> bool {
        self.read_reserved(TOKEN_HASH_KEY)
            .is_some_and(|hash| hash == blake3::hash(token.as_bytes()).to_hex().to_string())
    }

    /// The cluster's own keys; `None` when they cannot be read (an error
    /// reading the store, logged; the next call tries again).
    fn reserved(&self) -> Option<Arc<BTreeMap<String, Bytes>>> {
        let mut cached = self.inner.reserved.lock();
        if cached.is_none() {
            match load_reserved(&self.inner.store) {
                Ok(keys) => *cached = Some(Arc::new(keys)),
                Err(error) => tracing::warn!(%error, "reading the cluster's own keys failed"),
            }
        }
        cached.clone()
    }

    fn reserved_value(&self, key: &str) -> Option<Bytes> {
        self.reserved()?.get(key).cloned()
    }

    /// Called after every change to the cluster's own keys.
    fn reserved_changed(&self) {
        *self.inner.reserved.lock() = None;
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(&self.reserved_value(key)?).ok()
    }

    /// A group's configuration and state (defaults when never set).
    pub fn group(&self, group: &str) -> (GroupConfig, GroupState) {
        (
            self.read_json(&group_key(group, "config"))
                .unwrap_or_default(),
            self.read_json(&group_key(group, "state"))
                .unwrap_or_default(),
        )
    }

    /// Every group with a configuration or a state, plus the default group.
    pub fn groups(&self) -> Vec<String> {
        let groups_prefix = format!("{GROUPS_DIR}/");
        let mut groups: Vec<String> = self
            .reserved()
            .unwrap_or_default()
            .keys()
            .filter_map(|key| key.strip_prefix(&groups_prefix)?.split('/').next())
            .map(str::to_string)
            .collect();
        groups.dedup();
        if !groups.iter().any(|g| g == DEFAULT_GROUP) {
            groups.push(DEFAULT_GROUP.to_string());
        }
        groups.sort();
        groups
    }

    fn read_reserved(&self, key: &str) -> Option<String> {
        String::from_utf8(self.reserved_value(key)?.to_vec()).ok()
    }

    fn apply_request(
        &self,
        request: Request,
        events: &mut Vec<keel_store::ChangeEvent>,
    ) -> Result<Response, StorageError> {
        // Every request but a transaction writes the cluster's own keys;
        // clients may not write there (the API refuses), but an entry is
        // trusted only as far as it is checked.
        let changes_reserved = match &request {
            Request::Txns(txns) => txns.iter().any(touches_reserved),
            _ => true,
        };
        let response = self.apply_one(request, events);
        if changes_reserved {
            self.reserved_changed();
        }
        response
    }

    fn apply_one(
        &self,
        request: Request,
        events: &mut Vec<keel_store::ChangeEvent>,
    ) -> Result<Response, StorageError> {
        let store = &self.inner.store;
        match request {
            Request::Txns(txns) => {
                let outcomes = store
                    .apply_recording(&txns, Some(events))
                    .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                Ok(Response::Txns(outcomes))
            }
            Request::AllocateNodeId => {
                let next = self
                    .read_reserved(NEXT_NODE_ID_KEY)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(FIRST_JOINER_ID);
                store
                    .apply(&[Txn::put(NEXT_NODE_ID_KEY, (next + 1).to_string())])
                    .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                Ok(Response::NodeId(next))
            }
            Request::SetGroupConfig { group, config } => {
                let json = serde_json::to_vec(&config).expect("group config serializes");
                store
                    .apply(&[Txn::put(group_key(&group, "config"), json)])
                    .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                Ok(Response::None)
            }
            Request::SetPrimary {
                group,
                expected_term,
                primary,
                at_ms,
                reason,
            } => {
                let mut state: GroupState = self
                    .read_json(&group_key(&group, "state"))
                    .unwrap_or_default();
                if state.term != expected_term {
                    return Ok(Response::Primary {
                        applied: false,
                        term: state.term,
                    });
                }
                state.apply(primary, at_ms, reason);
                let json = serde_json::to_vec(&state).expect("group state serializes");
                store
                    .apply(&[Txn::put(group_key(&group, "state"), json)])
                    .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                Ok(Response::Primary {
                    applied: true,
                    term: state.term,
                })
            }
            Request::SetClusterMeta {
                cluster_id,
                token_hash,
            } => {
                if self.read_reserved(CLUSTER_ID_KEY).is_none() {
                    let txn = Txn {
                        compare: Vec::new(),
                        ops: vec![
                            keel_store::Op::Put {
                                key: CLUSTER_ID_KEY.into(),
                                value: Bytes::from(cluster_id),
                            },
                            keel_store::Op::Put {
                                key: TOKEN_HASH_KEY.into(),
                                value: Bytes::from(token_hash),
                            },
                        ],
                    };
                    store
                        .apply(&[txn])
                        .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                }
                Ok(Response::None)
            }
        }
    }

    fn manifest_from_checkpoint(&self) -> Option<(SnapshotMeta, SnapshotManifest)> {
        let checkpoint = self.inner.store.checkpoints().pop()?;
        let applied: AppliedMeta = decode(&checkpoint.meta).ok()?;
        applied.last_applied?;
        let manifest = SnapshotManifest {
            root: checkpoint.root,
            revision: checkpoint.revision,
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
        };
        Some((snapshot_meta(&manifest, checkpoint.sequence), manifest))
    }
}

/// Every value under the cluster's own prefix, read from a fresh view
/// (which is dropped, so it holds no old tree in memory).
fn load_reserved(store: &Store) -> Result<BTreeMap<String, Bytes>, keel_store::StoreError> {
    let view = store.snapshot();
    let mut keys = BTreeMap::new();
    for item in view.list(RESERVED_PREFIX, true)? {
        if let Some(value) = view.get_value(&item.key)? {
            keys.insert(item.key, value);
        }
    }
    Ok(keys)
}

/// Whether a transaction may change a key under the cluster's own prefix
/// (a prefix delete of a parent of it included).
fn touches_reserved(txn: &Txn) -> bool {
    txn.ops.iter().any(|op| {
        let key = match op {
            keel_store::Op::Put { key, .. }
            | keel_store::Op::PutStored { key, .. }
            | keel_store::Op::Delete { key } => key,
            keel_store::Op::DeletePrefix { prefix } => prefix,
        };
        let key = key.trim_start_matches('/');
        key.starts_with(RESERVED_PREFIX) || RESERVED_PREFIX.starts_with(key)
    })
}

fn snapshot_meta(manifest: &SnapshotManifest, sequence: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: manifest.last_applied,
        last_membership: manifest.membership.clone(),
        snapshot_id: format!(
            "{}-{}-{}",
            manifest.last_applied.map_or(0, |l| l.index),
            sequence,
            manifest.root.short()
        ),
    }
}

/// A snapshot begun when the builder was requested: its checkpoint is
/// written, and becomes durable and recorded when it is built.
pub struct PreparedSnapshot {
    sm: StateMachine,
    /// `None` when the checkpoint could not be begun.
    begun: Option<(PendingCheckpoint, AppliedMeta)>,
    /// How long applies waited while it was begun.
    began_in: Duration,
}

impl PreparedSnapshot {
    /// Makes the begun checkpoint durable (on a blocking thread: its
    /// fdatasync may take seconds) and records it as the current snapshot.
    async fn finish(&mut self) -> Option<(SnapshotMeta, SnapshotManifest)> {
        let (pending, applied) = self.begun.take()?;
        let commit = pending.commit().clone();
        let started = Instant::now();
        let finished = tokio::task::spawn_blocking(move || pending.finish())
            .await
            .map_err(|e| e.to_string())
            .and_then(|finished| finished.map_err(|e| e.to_string()));
        let checkpoint = match finished {
            Ok(Some(checkpoint)) => checkpoint,
            Ok(None) => {
                tracing::info!(
                    "a newer snapshot was installed while this one was built; offering that one"
                );
                return None;
            }
            Err(error) => {
                tracing::error!(%error, "could not make a snapshot's checkpoint durable; offering the previous one");
                return None;
            }
        };
        let manifest = SnapshotManifest {
            root: commit.root,
            revision: commit.revision,
            last_applied: applied.last_applied,
            membership: applied.membership,
        };
        let meta = snapshot_meta(&manifest, checkpoint.sequence);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            began_ms = self.began_in.as_millis() as u64,
            made_durable_ms = started.elapsed().as_millis() as u64,
            "snapshot built (applies waited only while it began)"
        );
        let mut state = self.sm.inner.state.lock();
        // An install may have made a newer one current meanwhile.
        if state
            .current
            .as_ref()
            .is_none_or(|(current, _)| current.last_log_id <= meta.last_log_id)
        {
            state.current = Some((meta.clone(), manifest.clone()));
        }
        Some((meta, manifest))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PreparedSnapshot {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Without a new snapshot, Raft keeps a consistent one: the last good
        // snapshot, if there is one.
        let Some((meta, manifest)) = self.finish().await.or_else(|| self.sm.current_snapshot())
        else {
            return Err(sm_error(
                ErrorVerb::Write,
                "no snapshot could be made, and none was made before (see the error logged above)",
            ));
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(encode(&manifest))),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = PreparedSnapshot;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.inner.state.lock();
        Ok((state.applied.last_applied, state.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.inner.state.lock();
        let mut responses = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            state.applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(request) => {
                    let ops = match &request {
                        Request::Txns(txns) => txns.len() as u64,
                        _ => 1,
                    };
                    state.ops_since_flush += ops;
                    self.apply_request(request, &mut events)?
                }
                EntryPayload::Membership(membership) => {
                    state.applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                    state.ops_since_flush += 1;
                    Response::None
                }
            };
            responses.push(response);
        }
        state.last_apply = Instant::now();
        if state.ops_since_flush >= FLUSH_OPS_MAX || state.last_flush.elapsed() >= FLUSH_INTERVAL {
            match self.flush_locked(&mut state, Durability::Buffered) {
                Ok(()) => {}
                // Nothing is lost: the entries are durable in the Raft log and
                // applied in memory; the flush is retried after the next apply
                // or when idle (which also tells the disk monitor).
                Err(error @ keel_store::StoreError::DiskFull { .. }) => {
                    tracing::warn!(%error, "store flush postponed");
                }
                Err(error) => return Err(sm_error(ErrorVerb::Write, error)),
            }
        }
        drop(state);
        self.inner.events.publish(events);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Begun here, in the state machine's own task, so it is a consistent
        // point even though building runs beside later applies.
        let started = Instant::now();
        let mut state = self.inner.state.lock();
        let begun = match self
            .inner
            .store
            .begin_checkpoint(Some(encode(&state.applied)))
        {
            Ok(pending) => {
                state.flushed();
                Some((pending, state.applied.clone()))
            }
            Err(error) => {
                tracing::error!(%error, "could not begin a checkpoint for a snapshot; offering the previous one");
                None
            }
        };
        PreparedSnapshot {
            sm: self.clone(),
            begun,
            began_in: started.elapsed(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let manifest: SnapshotManifest =
            decode(snapshot.get_ref()).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        let applied = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let mut state = self.inner.state.lock();
        self.inner
            .store
            .adopt_root(manifest.root, manifest.revision, encode(&applied))
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        state.applied = applied;
        state.current = Some((meta.clone(), manifest.clone()));
        state.flushed();
        self.reserved_changed();
        self.inner.events.reset(manifest.revision);
        tracing::info!(root = %manifest.root, revision = manifest.revision, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current_snapshot().map(|(meta, manifest)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(encode(&manifest))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::rules::GroupConfig;
    use keel_store::StoreOptions;
    use openraft::{CommittedLeaderId, LogId as RaftLogId};

    fn entry(index: u64, request: Request) -> Entry {
        Entry {
            log_id: RaftLogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(request),
        }
    }

    fn set_primary(expected_term: u64) -> Request {
        Request::SetPrimary {
            group: "db".into(),
            expected_term,
            primary: Some(1),
            at_ms: 1,
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn cluster_keys_are_cached_and_read_again_after_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            deterministic_revisions: true,
            ..StoreOptions::default()
        };
        let mut sm = StateMachine::new(Store::init(dir.path(), options).unwrap()).unwrap();
        assert_eq!(sm.groups(), vec![DEFAULT_GROUP.to_string()]);
        assert_eq!(sm.cluster_id(), None);

        let responses = sm
            .apply(vec![
                entry(
                    1,
                    Request::SetClusterMeta {
                        cluster_id: "c1".into(),
                        token_hash: blake3::hash(b"secret").to_hex().to_string(),
                    },
                ),
                // The second allocation sees the first, in the same batch.
                entry(2, Request::AllocateNodeId),
                entry(3, Request::AllocateNodeId),
                entry(
                    4,
                    Request::SetGroupConfig {
                        group: "db".into(),
                        config: GroupConfig::default(),
                    },
                ),
                entry(5, set_primary(0)),
                // A decision against a stale term is refused.
                entry(6, set_primary(0)),
            ])
            .await
            .unwrap();
        assert_eq!(responses[1], Response::NodeId(FIRST_JOINER_ID));
        assert_eq!(responses[2], Response::NodeId(FIRST_JOINER_ID + 1));
        assert_eq!(
            responses[4..],
            [
                Response::Primary {
                    applied: true,
                    term: 1
                },
                Response::Primary {
                    applied: false,
                    term: 1
                }
            ]
        );
        assert_eq!(sm.cluster_id().as_deref(), Some("c1"));
        assert!(sm.token_matches("secret"));
        assert_eq!(sm.groups(), vec!["db".to_string(), DEFAULT_GROUP.into()]);
        assert_eq!(sm.group("db").1.term, 1);

        // Client transactions leave the cached keys alone...
        let cached = sm.reserved().unwrap();
        sm.apply(vec![entry(
            7,
            Request::Txns(vec![Txn::put("app/x", "1")].into()),
        )])
        .await
        .unwrap();
        assert!(Arc::ptr_eq(&cached, &sm.reserved().unwrap()));
        // ...unless one writes under the cluster's prefix (the API refuses
        // that, but the state machine does not rely on it).
        sm.apply(vec![entry(
            8,
            Request::Txns(vec![Txn::put(CLUSTER_ID_KEY, "c2")].into()),
        )])
        .await
        .unwrap();
        assert_eq!(sm.cluster_id().as_deref(), Some("c2"));
        sm.apply(vec![entry(
            9,
            Request::Txns(
                vec![Txn {
                    compare: Vec::new(),
                    ops: vec![keel_store::Op::DeletePrefix { prefix: "".into() }],
                }]
                .into(),
            ),
        )])
        .await
        .unwrap();
        assert_eq!(sm.cluster_id(), None);
        assert_eq!(sm.groups(), vec![DEFAULT_GROUP.to_string()]);
    }

    /// A snapshot covers the entries applied when its builder was asked
    /// for, not those applied while it was built; once built it is the
    /// current snapshot, and recorded as the store's newest checkpoint.
    #[tokio::test]
    async fn a_snapshot_covers_what_was_applied_when_its_builder_was_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let options = || StoreOptions {
            deterministic_revisions: true,
            ..StoreOptions::default()
        };
        let mut sm = StateMachine::new(Store::init(dir.path(), options()).unwrap()).unwrap();
        let put = |index: u64, value: &str| {
            entry(
                index,
                Request::Txns(vec![Txn::put("app/x", value.to_string())].into()),
            )
        };
        sm.apply(vec![put(1, "one"), put(2, "two")]).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        sm.apply(vec![put(3, "three")]).await.unwrap();
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(2));
        let manifest: SnapshotManifest = decode(snapshot.snapshot.get_ref()).unwrap();
        let view = sm.store().at_root(manifest.root, manifest.revision, None);
        assert_eq!(view.get_value("app/x").unwrap().unwrap(), &b"two"[..]);
        let recorded = sm.store().checkpoints().pop().unwrap();
        assert_eq!(
            (recorded.root, recorded.revision),
            (manifest.root, manifest.revision)
        );
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(sm.last_applied().map(|l| l.index), Some(3));
    }
}
