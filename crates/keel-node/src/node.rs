//! A running node: the store, its Raft log and state machine, the network,
//! the batchers and the background tasks, assembled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_store::{Store, StoreOptions};
use openraft::{ChangeMembers, ServerState};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::api::{ClusterStatus, JoinRequest, JoinResponse, MemberStatus, NodeStatus};
use crate::config::NodeConfig;
use crate::fence::Fence;
use crate::fetch::Fetcher;
use crate::identity::NodeIdentity;
use crate::link::Links;
use crate::log_store::LogStore;
use crate::network::{Contacts, Network};
use crate::proposer::{Proposer, ReadBarrier, Routing};
use crate::state_machine::StateMachine;
use crate::types::{NodeId, NodeInfo, Raft, Request, Response};

/// Flush applied changes after the state machine has been idle this long.
const IDLE_FLUSH_AFTER: Duration = Duration::from_millis(200);
/// A follower whose applied index trails its log by more is not ready.
const READY_APPLY_LAG_MAX: u64 = 1_000;
/// A learner is "caught up" when it trails the leader by at most this much.
const PROMOTE_LAG_MAX: u64 = 200;
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Inner {
    pub config: NodeConfig,
    pub identity: NodeIdentity,
    pub raft: Raft,
    pub sm: StateMachine,
    pub store: Store,
    pub log: LogStore,
    pub fence: Fence,
    pub proposer: Proposer,
    pub reads: ReadBarrier,
    pub fetcher: Fetcher,
    pub scrubber: crate::scrub::Scrubber,
    pub routing: Routing,
    pub contacts: Contacts,
    pub http: reqwest::Client,
    pub started: Instant,
    pub primary: crate::primary::PrimaryState,
    pub health: crate::health::Health,
    pub faults: crate::faults::Faults,
    pub disk: crate::disk::Disk,
    /// Milliseconds since `started` when the leader last sent entries or a heartbeat.
    pub last_leader_contact: AtomicU64,
    /// Set when start-up cut damage from the Raft log: entries this node
    /// may have acknowledged are gone, so it must not help elect a leader
    /// that lacks them. It abstains from votes until a leader has caught it
    /// up, or until this deadline (so several damaged nodes cannot deadlock).
    abstain_until: Option<Instant>,
    /// What opening the Raft log found (the store keeps its own report).
    pub log_recovery: crate::log_store::LogRecovery,
    healthy_since: Mutex<HashMap<NodeId, Instant>>,
    shutdown: watch::Sender<bool>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

/// Builds the HTTP client nodes use to talk to each other.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(HTTP_CONNECT_TIMEOUT)
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client without TLS always builds")
}

impl Node {
    /// Opens the data directory and starts Raft (not the HTTP server; see
    /// [`crate::server::serve`]). Refuses to start when the directory has
    /// no valid membership identity for its store.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        Node::start_with(config, crate::health::HealthCarry::default()).await
    }

    /// [`Node::start`], continuing the health monitor's ladder of an
    /// earlier incarnation (an in-process restart, see [`crate::daemon`]).
    pub async fn start_with(
        config: NodeConfig,
        carry: crate::health::HealthCarry,
    ) -> anyhow::Result<Node> {
        let faults = crate::faults::Faults::for_node(&config.data_dir);
        let options = StoreOptions {
            deterministic_revisions: true,
            space_limit: faults.space_limit(),
            cache_bytes: config.store.cache_bytes,
            ..StoreOptions::default()
        };
        let dir = config.data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || crate::disk::open_store(&dir, options));
        let store = match opened.await? {
            Ok(store) => store,
            Err(
                keel_store::StoreError::NoDataDir { path }
                | keel_store::StoreError::NotInitialised { path },
            ) => {
                anyhow::bail!(
                    "data directory {} is missing or empty. If this node was a member, its data is gone \
                     (wiped, or the volume is not mounted): it will not start under its old id. Mount the \
                     volume and retry, or rejoin as a new member with `keel join --data-dir {} --endpoint URL \
                     --token TOKEN`; to found a new cluster, run `keel init`",
                    path.display(),
                    path.display()
                )
            }
            Err(error) => return Err(error.into()),
        };
        let identity = NodeIdentity::load(&config.data_dir, &store.identity().store_id)?;
        let fence = Fence::new(&config.data_dir)?;
        let (log, recovery) = LogStore::open(
            &config.data_dir.join("raft"),
            &config.data_dir.join(keel_store::datadir::STAGING_DIR),
            fence.clone(),
            faults.clone(),
        )?;
        if let Some(limit) = faults.space_limit() {
            log.set_space_limit(limit);
        }
        let damaged = recovery.truncated_bytes > 0 || recovery.committed_clamped;
        if let Some(found) = crate::health::diag::startup_findings(store.recovery(), &recovery) {
            // A restart the health monitor asks for reopens both; the
            // events it carries over keep this start's findings.
            carry.note("startup", found);
        }
        if damaged {
            tracing::warn!(
                ?recovery,
                "Raft log recovered from damage; abstaining from elections until caught up"
            );
        }
        let abstain_until = damaged.then(|| {
            Instant::now() + 4 * Duration::from_millis(config.raft.election_timeout_max_ms)
        });
        let sm = StateMachine::new(store.clone())?;
        config.primary.validate()?;
        config.health.validate()?;
        let disk = crate::disk::Disk::new(
            identity.node_id,
            &config.data_dir,
            config.disk.clone(),
            faults.clone(),
        );
        let http = http_client();
        let contacts: Contacts = Arc::new(Mutex::new(HashMap::new()));
        let links = Links::new(Arc::new(identity.cluster_id.clone()), identity.node_id);
        let network = Network::new(links.clone(), contacts.clone(), faults.clone());
        let raft_config = Arc::new(config.raft_config()?);
        let raft = Raft::new(
            identity.node_id,
            raft_config,
            network,
            log.clone(),
            sm.clone(),
        )
        .await?;
        let routing = Routing {
            raft: raft.clone(),
            http: http.clone(),
            links,
            node_id: identity.node_id,
            faults: faults.clone(),
            disk: disk.clone(),
        };
        let fetcher = Fetcher::new(
            store.clone(),
            http.clone(),
            identity.cluster_id.clone(),
            faults.clone(),
        );
        let scrubber =
            crate::scrub::Scrubber::new(store.clone(), fetcher.clone(), config.scrub.clone());
        let node = Node {
            inner: Arc::new(Inner {
                proposer: Proposer::start(routing.clone()),
                reads: ReadBarrier::start(routing.clone()),
                fetcher,
                scrubber,
                primary: crate::primary::PrimaryState::new(config.primary.clone()),
                health: crate::health::Health::new(carry),
                faults,
                disk,
                routing,
                config,
                identity,
                raft,
                sm,
                store,
                log,
                fence,
                contacts,
                http,
                started: Instant::now(),
                last_leader_contact: AtomicU64::new(0),
                abstain_until,
                log_recovery: recovery,
                healthy_since: Mutex::new(HashMap::new()),
                shutdown: watch::channel(false).0,
            }),
        };
        node.bootstrap_if_founder().await?;
        node.spawn_background_tasks();
        crate::election::spawn(node.clone());
        node.spawn_primary_tasks();
        node.spawn_health_monitor();
        node.spawn_disk_monitor();
        let peers_of = node.clone();
        node.inner
            .scrubber
            .spawn(move || peers_of.peer_urls(), node.shutdown_signal());
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.identity.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.inner.identity.cluster_id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Notes that the leader was heard from (called by the Raft endpoints).
    pub(crate) fn leader_contact(&self) {
        let now = self.inner.started.elapsed().as_millis() as u64;
        self.inner
            .last_leader_contact
            .store(now.max(1), Ordering::Relaxed);
    }

    /// How long ago a leader was last heard from (`None`: never, since
    /// this node started).
    pub(crate) fn since_leader_contact(&self) -> Option<Duration> {
        let at = self.inner.last_leader_contact.load(Ordering::Relaxed);
        (at > 0).then(|| self.uptime().saturating_sub(Duration::from_millis(at)))
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The id of the last entry in this node's Raft log.
    pub(crate) fn last_log_id(&self) -> Option<crate::types::LogId> {
        self.inner.log.last_log_id()
    }

    /// Whether this node must not vote now (see `abstain_until`).
    pub(crate) fn abstains_from_votes(&self) -> bool {
        let heard_from_leader = self.inner.last_leader_contact.load(Ordering::Relaxed) > 0;
        self.inner
            .abstain_until
            .is_some_and(|until| !heard_from_leader && Instant::now() < until)
    }

    /// A receiver that turns true when the node shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// The founding node initialises Raft with itself as the only voter and
    /// records the cluster's identity and join token in the replicated state.
    async fn bootstrap_if_founder(&self) -> anyhow::Result<()> {
        if self.inner.identity.bootstrap_token.is_none() {
            return Ok(());
        }
        if !self.inner.raft.is_initialized().await? {
            let members = BTreeMap::from([(
                self.id(),
                NodeInfo {
                    addr: self.inner.config.advertise_url(),
                },
            )]);
            self.inner.raft.initialize(members).await?;
        }
        let node = self.clone();
        tokio::spawn(async move { node.record_cluster_meta().await });
        Ok(())
    }

    async fn record_cluster_meta(&self) {
        let Some(token) = self.inner.identity.bootstrap_token.clone() else {
            return;
        };
        loop {
            if self.inner.sm.cluster_id().is_some() {
                break;
            }
            let request = Request::SetClusterMeta {
                cluster_id: self.inner.identity.cluster_id.clone(),
                token_hash: blake3::hash(token.as_bytes()).to_hex().to_string(),
            };
            match tokio::time::timeout(
                Duration::from_secs(5),
                self.inner.raft.client_write(request),
            )
            .await
            {
                Ok(Ok(_)) => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        // New members must start from a snapshot, never by replaying the log
        // from its start: data the founder held before the cluster existed
        // is in its store, not in the log.
        if let Err(error) = self.snapshot_and_purge().await {
            tracing::warn!(%error, "could not snapshot at bootstrap; retrying at the next start");
            return;
        }
        let mut identity = self.inner.identity.clone();
        identity.bootstrap_token = None;
        if let Err(error) = identity.save(&self.inner.config.data_dir) {
            tracing::warn!(%error, "could not clear the bootstrap token from node.json");
        }
    }

    /// Takes a snapshot and purges the log up to it.
    pub(crate) async fn snapshot_and_purge(&self) -> anyhow::Result<()> {
        let raft = &self.inner.raft;
        let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        raft.trigger().snapshot().await?;
        let metrics = raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "bootstrap snapshot",
            )
            .await?;
        let upto = metrics.snapshot.map_or(0, |s| s.index);
        raft.trigger().purge_log(upto).await?;
        Ok(())
    }

    fn spawn_background_tasks(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut shutdown = node.shutdown_signal();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut promote_tick = 0u32;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(reason) = node.inner.fence.check() {
                    tracing::error!(%reason, "data directory lost: stopping Raft so this node never acknowledges again");
                    let _ = node.inner.raft.shutdown().await;
                    return;
                }
                let sm = node.inner.sm.clone();
                if let Ok(Err(error)) =
                    tokio::task::spawn_blocking(move || sm.flush_if_idle(IDLE_FLUSH_AFTER)).await
                {
                    tracing::warn!(%error, "idle flush failed");
                    if matches!(error, keel_store::StoreError::DiskFull { .. }) {
                        node.inner.disk.note_enospc(&error);
                    }
                }
                promote_tick += 1;
                if promote_tick.is_multiple_of(10) && node.is_leader() {
                    node.promote_healthy_learners().await;
                }
            }
        });
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow().clone();
        metrics.current_leader == Some(metrics.id) && metrics.state == ServerState::Leader
    }

    /// Writes (through Raft, batched).
    pub fn proposer(&self) -> &Proposer {
        &self.inner.proposer
    }

    /// Waits until a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), crate::proposer::ProposeError> {
        if let Some(reason) = self.fenced_by_health() {
            return Err(crate::proposer::ProposeError::Isolated {
                node: self.id(),
                reason,
            });
        }
        self.inner.reads.wait().await
    }

    /// Test-only: makes the current Raft log segment fail every append.
    pub fn inject_bad_log_segment(&self) -> anyhow::Result<()> {
        self.inner.log.inject_bad_segment()
    }

    /// Test-only fault switches (see [`crate::faults`]).
    pub fn faults(&self) -> &crate::faults::Faults {
        &self.inner.faults
    }

    /// A read index for a follower's linearizable read (leader only).
    pub async fn read_index_for_follower(
        &self,
    ) -> Result<Option<u64>, crate::proposer::ProposeError> {
        self.inner.reads.read_index_for_follower().await
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.inner.fetcher
    }

    /// The background scrub and read repair (see [`crate::scrub`]).
    pub fn scrubber(&self) -> &crate::scrub::Scrubber {
        &self.inner.scrubber
    }

    pub fn scrub_status(&self) -> crate::scrub::ScrubStatus {
        self.inner.scrubber.status()
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.inner.sm
    }

    pub(crate) fn routing(&self) -> &Routing {
        &self.inner.routing
    }

    /// Base URLs of the other members.
    pub fn peer_urls(&self) -> Vec<String> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id())
            .map(|(_, node)| node.addr.clone())
            .collect()
    }

    // ---------------------------------------------------------------- status

    /// Whether this node itself is sound: fenced in, a running member with
    /// its data applied. This is the health a primary candidate reports in
    /// its heartbeats; contact with a leader is left out, as it comes and
    /// goes cluster-wide during an election (heartbeats measure contact).
    pub fn local_health(&self) -> Result<(), String> {
        self.inner.fence.check()?;
        let metrics = self.inner.raft.metrics().borrow().clone();
        if let Err(error) = &metrics.running_state {
            return Err(format!("Raft stopped: {error}"));
        }
        let membership = metrics.membership_config.membership();
        if membership.get_node(&self.id()).is_none() {
            return Err("not (or no longer) a member of the cluster".into());
        }
        if self.inner.sm.cluster_id().is_none() {
            return Err("the cluster's identity is not recorded yet (bootstrapping)".into());
        }
        let fetching = self.inner.fetcher.in_progress();
        if let Some(fetch) = fetching.first() {
            return Err(format!(
                "fetching snapshot {} ({} blobs missing)",
                fetch.root, fetch.missing
            ));
        }
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        let last_log = metrics.last_log_index.unwrap_or(0);
        if last_log.saturating_sub(applied) > READY_APPLY_LAG_MAX {
            return Err(format!("applying: {applied} of {last_log}"));
        }
        Ok(())
    }

    /// Whether this node is caught up and serving, and if not, why.
    pub fn readiness(&self) -> Result<(), String> {
        self.local_health()?;
        let metrics = self.inner.raft.metrics().borrow().clone();
        let Some(leader) = metrics.current_leader else {
            return Err("no leader known".into());
        };
        let lease = Duration::from_millis(self.inner.config.raft.election_timeout_max_ms);
        if leader == self.id() {
            match metrics.millis_since_quorum_ack {
                Some(ms) if Duration::from_millis(ms) <= lease => Ok(()),
                Some(ms) => Err(format!("leader without a quorum for {ms} ms")),
                None => Err("leader not yet acknowledged by a quorum".into()),
            }
        } else {
            let heard = self.inner.last_leader_contact.load(Ordering::Relaxed);
            let since = (self.inner.started.elapsed().as_millis() as u64).saturating_sub(heard);
            if heard == 0 || Duration::from_millis(since) > 3 * lease {
                return Err(format!("leader {leader} not heard from recently"));
            }
            Ok(())
        }
    }

    /// This node's status.
    pub fn status(&self) -> NodeStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Learner => "learner",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
        };
        let flushed = self.inner.store.last_commit();
        let ready = self.readiness();
        let heard = self.inner.last_leader_contact.load(Ordering::Relaxed);
        let stats = self.inner.store.stats();
        NodeStatus {
            node_id: self.id(),
            cluster_id: self.cluster_id().to_string(),
            addr: self.inner.config.advertise_url(),
            role: role.to_string(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            committed_index: self.committed_index(&metrics),
            applied_index: metrics.last_applied.map(|l| l.index),
            revision: self.inner.store.revision(),
            root: flushed.as_ref().map(|c| c.root.to_string()),
            root_revision: flushed.map_or(0, |c| c.revision),
            ready: ready.is_ok(),
            not_ready_reason: ready.err(),
            last_leader_contact_ms: (heard > 0 && metrics.current_leader != Some(self.id()))
                .then(|| (self.inner.started.elapsed().as_millis() as u64).saturating_sub(heard)),
            fetches: self.inner.fetcher.in_progress(),
            pack_bytes: stats.pack_bytes,
            log_bytes: self.inner.log.bytes(),
            uptime_ms: self.inner.started.elapsed().as_millis() as u64,
        }
    }

    /// The leader computes the commit index from its replication matches;
    /// others report the commit index the leader last sent them.
    fn committed_index(&self, metrics: &openraft::RaftMetrics<NodeId, NodeInfo>) -> Option<u64> {
        if let Some(replication) = &metrics.replication {
            let voters: BTreeSet<NodeId> =
                metrics.membership_config.membership().voter_ids().collect();
            let mut matched: Vec<u64> = replication
                .iter()
                .filter(|(id, _)| voters.contains(id))
                .map(|(_, m)| m.map_or(0, |l| l.index))
                .collect();
            matched.sort_unstable();
            // The highest index held by a majority of voters.
            return matched
                .len()
                .checked_sub(voters.len() / 2 + 1)
                .map(|i| matched[i]);
        }
        self.inner.log.committed().map(|l| l.index)
    }

    /// Every member's status, as seen from here.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = metrics.last_log_index;
        let contacts = self.inner.contacts.lock().clone();
        let mut members = Vec::new();
        let queries = membership.nodes().map(|(id, node)| {
            let (id, addr) = (*id, node.addr.clone());
            let node = self.clone();
            async move {
                let status = if id == node.id() {
                    Ok(node.status())
                } else {
                    node.fetch_status(&addr).await
                };
                (id, addr, status)
            }
        });
        for (id, addr, status) in futures::future::join_all(queries).await {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|l| l.index);
            let (status, error) = match status {
                Ok(status) => (Some(status), None),
                Err(error) => (None, Some(error)),
            };
            members.push(MemberStatus {
                node_id: id,
                addr,
                membership: if voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_string(),
                matched_index: matched,
                lag: matched.zip(last_log).map(|(m, l)| l.saturating_sub(m)),
                last_contact_ms: contacts.get(&id).map(|t| t.elapsed().as_millis() as u64),
                status,
                error,
            });
        }
        ClusterStatus {
            cluster_id: self.cluster_id().to_string(),
            leader: metrics.current_leader,
            reported_by: self.id(),
            members,
        }
    }

    pub(crate) async fn fetch_status(&self, addr: &str) -> Result<NodeStatus, String> {
        self.fetch_json(addr, "/v1/status").await
    }

    pub(crate) async fn fetch_diagnostics(
        &self,
        addr: &str,
    ) -> Result<crate::health::diag::NodeDiagnostics, String> {
        self.fetch_json(addr, "/v1/diagnostics?local=true").await
    }

    /// Asks a peer's client API (a short timeout: for status pages).
    async fn fetch_json<T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
    ) -> Result<T, String> {
        if self.inner.faults.isolated() {
            return Err("cut off by fault injection".into());
        }
        let response = self
            .inner
            .http
            .get(format!("{}{path}", addr.trim_end_matches('/')))
            .timeout(STATUS_TIMEOUT)
            .send()
            .await
            .map_err(crate::client::http_failure)?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        response.json().await.map_err(crate::client::http_failure)
    }

    // ---------------------------------------------------------------- membership

    /// Admits a new node (leader only): checks the token, allocates a
    /// never-used id through the log, removes members it replaces (same
    /// address: a wiped node coming back), and adds it as a learner.
    pub async fn admit(&self, request: JoinRequest) -> Result<JoinResponse, String> {
        if self.inner.sm.cluster_id().is_none() {
            return Err("the cluster is still bootstrapping; retry shortly".into());
        }
        if !self.inner.sm.token_matches(&request.token) {
            return Err("the join token is wrong".into());
        }
        let response = self
            .inner
            .raft
            .client_write(Request::AllocateNodeId)
            .await
            .map_err(|e| e.to_string())?;
        let Response::NodeId(node_id) = response.data else {
            return Err("the cluster did not allocate an id".into());
        };
        let metrics = self.inner.raft.metrics().borrow().clone();
        let stale: Vec<NodeId> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, node)| {
                node.addr.trim_end_matches('/') == request.addr.trim_end_matches('/')
                    && **id != node_id
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            tracing::warn!(node = id, addr = %request.addr, "removing the member a joining node replaces");
            self.remove_member(*id).await?;
        }
        self.inner
            .raft
            .add_learner(
                node_id,
                NodeInfo {
                    addr: request.addr.clone(),
                },
                false,
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(node = node_id, addr = %request.addr, "admitted a learner");
        Ok(JoinResponse {
            cluster_id: self.cluster_id().to_string(),
            node_id,
            replaced: stale,
        })
    }

    /// Removes a member (leader only): first as a voter, then as a node.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), String> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(format!("node {id} is not a member"));
        }
        if membership.voter_ids().any(|v| v == id) {
            let voters: BTreeSet<NodeId> = [id].into();
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveVoters(voters), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
        {
            let nodes: BTreeSet<NodeId> = [id].into();
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveNodes(nodes), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.inner.healthy_since.lock().remove(&id);
        Ok(())
    }

    /// Promotes learners that have been caught up and ready for the
    /// stabilization window.
    async fn promote_healthy_learners(&self) {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = metrics.last_log_index.unwrap_or(0);
        let window = Duration::from_secs(self.inner.config.membership.promote_after_healthy_secs);
        for (id, node) in membership.nodes() {
            if voters.contains(id) {
                continue;
            }
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map_or(0, |l| l.index);
            let caught_up = last_log.saturating_sub(matched) <= PROMOTE_LAG_MAX;
            let ready = caught_up && self.fetch_status(&node.addr).await.is_ok_and(|s| s.ready);
            let since = {
                let mut healthy = self.inner.healthy_since.lock();
                if !ready {
                    healthy.remove(id);
                    continue;
                }
                *healthy.entry(*id).or_insert_with(Instant::now)
            };
            if since.elapsed() >= window {
                let ids: BTreeSet<NodeId> = [*id].into();
                match self
                    .inner
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(node = id, "promoted a learner to voter");
                        self.inner.healthy_since.lock().remove(id);
                    }
                    Err(error) => tracing::warn!(node = id, %error, "promotion failed; will retry"),
                }
            }
        }
    }

    // ---------------------------------------------------------------- shutdown

    /// Stops Raft, flushes the store and records a clean shutdown.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let _ = self.inner.shutdown.send(true);
        let _ = self.inner.raft.shutdown().await;
        let sm = self.inner.sm.clone();
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || {
            sm.flush_durable()?;
            store.close()
        })
        .await??;
        Ok(())
    }
}
