//! Node configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! listen = "127.0.0.1:7001"            # where the HTTP endpoint binds
//! advertise = "http://127.0.0.1:7001"  # how peers and clients reach it (default: from listen)
//!
//! [raft]
//! heartbeat_ms = 150
//! election_timeout_min_ms = 600
//! election_timeout_max_ms = 1200
//! snapshot_every_entries = 20000
//!
//! [membership]
//! promote_after_healthy_secs = 10      # a learner becomes a voter after this long caught up
//!
//! [primary]
//! heartbeat_ms = 1000                  # nodes heartbeat each other this often
//! dead_after_ms = 4000                 # a node not heard from this long is dead
//!
//! [health]                             # the escalation ladder (docs/health.md)
//! warn_after_ms = 10000                # a problem lasting this long is logged and shown
//! isolated_after_ms = 10000            # no peer heard this long: give up primary roles
//! nudge_after_ms = 30000               # then restart replication, with doubling delays
//! nudge_backoff_max_ms = 600000
//! rebuild_after_nudges = 3             # rebuild the Raft log from peers after this many
//! rebuild_min_window_ms = 300000       # fruitless nudges, over at least this long,
//! rebuild_min_interval_ms = 3600000    # at most once per this long (and only with evidence)
//! fsync_warn_ms = 500                  # a slower log fsync is a warning
//! fsync_critical_ms = 5000
//!
//! [scrub]
//! rate_bytes_per_sec = 8388608         # re-hash stored blobs at most this fast; 0 disables
//! pause_between_passes_ms = 60000      # rest between two passes over the tree
//!
//! [store]
//! cache_bytes = 268435456              # decoded directory nodes kept in memory (256 MiB)
//!
//! [disk]
//! low_watermark_bytes = 134217728      # below 128 MiB free, client writes are refused (507)
//! reserve_bytes = 67108864             # D/reserve: 64 MiB kept for what cannot be refused (0: none)
//! collect_after_bytes = 67108864       # collect the pack's garbage once it grew this much and
//!                                      #   doubled since the last collection (0: only when low)
//! ```
//!
//! The scrub reads every blob of the current tree and of the newest
//! checkpoint, and repairs what is missing or corrupt from peers (see
//! `scrub`). Reads that hit damage repair it at once whatever the rate.
//!
//! `[disk]`: with less than `low_watermark_bytes` free in the data
//! directory's file system, the node refuses client writes and entries from
//! the leader, releases its reserve (a preallocated file) so that what is
//! already accepted can still be applied, and reclaims space. It returns to
//! normal by itself once `low_watermark_bytes + reserve_bytes` plus a quarter
//! of the watermark are free again. See `disk.rs` and docs/health.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Raft timing and snapshot settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Also the timeout of one AppendEntries round trip.
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot (a durable checkpoint) is taken after this many entries.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log after a snapshot, for followers slightly behind.
    pub keep_after_snapshot: u64,
}

impl Default for RaftSettings {
    fn default() -> RaftSettings {
        RaftSettings {
            heartbeat_ms: 150,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_every_entries: 20_000,
            keep_after_snapshot: 5_000,
        }
    }
}

/// Membership management settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSettings {
    /// A learner is promoted to voter after being caught up and ready this long.
    pub promote_after_healthy_secs: u64,
}

impl Default for MembershipSettings {
    fn default() -> MembershipSettings {
        MembershipSettings {
            promote_after_healthy_secs: 10,
        }
    }
}

/// Primary election: liveness and the lease of a primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimarySettings {
    /// Nodes heartbeat each other this often.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is dead.
    pub dead_after_ms: u64,
}

impl Default for PrimarySettings {
    fn default() -> PrimarySettings {
        PrimarySettings {
            heartbeat_ms: 1000,
            dead_after_ms: 4000,
        }
    }
}

impl PrimarySettings {
    /// How long a primary keeps the role without confirming it through a
    /// quorum: one heartbeat less than `dead_after`, so it steps down before
    /// any other node can be elected.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.dead_after_ms.saturating_sub(self.heartbeat_ms))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.heartbeat_ms >= 50,
            "primary.heartbeat_ms must be at least 50"
        );
        anyhow::ensure!(
            self.dead_after_ms >= 2 * self.heartbeat_ms,
            "primary.dead_after_ms must be at least twice primary.heartbeat_ms (the primary's lease is the difference)"
        );
        Ok(())
    }
}

/// The local store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Memory for decoded directory nodes. Beyond it, nodes are read again
    /// from the pack (usually the page cache) and decoded; a key space
    /// whose nodes fit is served from memory.
    pub cache_bytes: u64,
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            cache_bytes: keel_store::store::CACHE_BYTES_DEFAULT,
        }
    }
}

/// Disk-space safety: low-space mode and the reserve (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskSettings {
    /// Client writes are refused while less than this is free (0: only
    /// after the disk actually ran full).
    pub low_watermark_bytes: u64,
    /// Size of the preallocated `D/reserve` file (0: no reserve).
    pub reserve_bytes: u64,
    /// A garbage collection runs in the background once the store's pack
    /// has grown by at least this much and has doubled since the last one
    /// (0: only in low-space mode).
    pub collect_after_bytes: u64,
}

impl Default for DiskSettings {
    fn default() -> DiskSettings {
        DiskSettings {
            low_watermark_bytes: 128 * 1024 * 1024,
            reserve_bytes: 64 * 1024 * 1024,
            collect_after_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The health monitor's thresholds (see [`crate::health`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    pub warn_after_ms: u64,
    pub isolated_after_ms: u64,
    pub nudge_after_ms: u64,
    pub nudge_backoff_max_ms: u64,
    pub rebuild_after_nudges: u32,
    pub rebuild_min_window_ms: u64,
    pub rebuild_min_interval_ms: u64,
    pub fsync_warn_ms: u64,
    pub fsync_critical_ms: u64,
}

impl Default for HealthSettings {
    fn default() -> HealthSettings {
        HealthSettings {
            warn_after_ms: 10_000,
            isolated_after_ms: 10_000,
            nudge_after_ms: 30_000,
            nudge_backoff_max_ms: 600_000,
            rebuild_after_nudges: 3,
            rebuild_min_window_ms: 300_000,
            rebuild_min_interval_ms: 3_600_000,
            fsync_warn_ms: 500,
            fsync_critical_ms: 5_000,
        }
    }
}

impl HealthSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.nudge_after_ms >= 1000,
            "health.nudge_after_ms must be at least 1000 (each nudge restarts replication)"
        );
        anyhow::ensure!(
            self.rebuild_after_nudges >= 1,
            "health.rebuild_after_nudges must be at least 1"
        );
        Ok(())
    }
}

/// The background scrub (see [`crate::scrub`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrubSettings {
    /// Bytes re-hashed per second, at most; 0 disables the scrub.
    pub rate_bytes_per_sec: u64,
    /// Rest between the end of one pass and the start of the next.
    pub pause_between_passes_ms: u64,
}

impl Default for ScrubSettings {
    fn default() -> ScrubSettings {
        ScrubSettings {
            // 1 GB of blobs every two minutes: a small share of one disk and
            // one core (BLAKE3 hashes well over 1 GB/s).
            rate_bytes_per_sec: 8 * 1024 * 1024,
            pause_between_passes_ms: 60_000,
        }
    }
}

/// Everything a node needs to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Base URL peers and clients use; defaults to `http://<listen>`.
    pub advertise: Option<String>,
    pub raft: RaftSettings,
    pub membership: MembershipSettings,
    pub primary: PrimarySettings,
    pub store: StoreSettings,
    pub disk: DiskSettings,
    pub health: HealthSettings,
    pub scrub: ScrubSettings,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            data_dir: PathBuf::from("keel-data"),
            listen: "127.0.0.1:7001".parse().expect("valid address"),
            advertise: None,
            raft: RaftSettings::default(),
            membership: MembershipSettings::default(),
            primary: PrimarySettings::default(),
            store: StoreSettings::default(),
            disk: DiskSettings::default(),
            health: HealthSettings::default(),
            scrub: ScrubSettings::default(),
        }
    }
}

impl NodeConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
    }

    /// The URL others use to reach this node.
    pub fn advertise_url(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    /// openraft's configuration, validated.
    pub fn raft_config(&self) -> anyhow::Result<openraft::Config> {
        let raft = &self.raft;
        let config = openraft::Config {
            cluster_name: "keel".into(),
            heartbeat_interval: raft.heartbeat_ms,
            election_timeout_min: raft.election_timeout_min_ms,
            election_timeout_max: raft.election_timeout_max_ms,
            // Keel runs the election timer, with a pre-vote round first
            // (see `election`); openraft's would raise a cut-off node's term.
            enable_elect: false,
            // The snapshot data is a small manifest; the install includes the
            // receiver's check that every blob is present.
            install_snapshot_timeout: 30_000,
            max_payload_entries: 256,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(raft.snapshot_every_entries),
            max_in_snapshot_log_to_keep: raft.keep_after_snapshot,
            purge_batch_size: 256,
            replication_lag_threshold: 1000,
            ..Default::default()
        };
        Ok(config.validate()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_the_node_cache_and_rejects_unknown_store_settings() {
        let config: NodeConfig = toml::from_str("[store]\ncache_bytes = 1048576\n").unwrap();
        assert_eq!(config.store.cache_bytes, 1 << 20);
        assert_eq!(config.disk, DiskSettings::default());
        let default: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(
            default.store.cache_bytes,
            keel_store::store::CACHE_BYTES_DEFAULT
        );
        let error = toml::from_str::<NodeConfig>("[store]\ncache_mb = 1\n").unwrap_err();
        assert!(error.to_string().contains("cache_mb"), "{error}");
    }

    #[test]
    fn background_collection_is_on_by_default_and_can_be_turned_off() {
        let default: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(default.disk.collect_after_bytes, 64 << 20);
        let off: NodeConfig = toml::from_str("[disk]\ncollect_after_bytes = 0\n").unwrap();
        assert_eq!(off.disk.collect_after_bytes, 0);
        assert_eq!(
            off.disk.reserve_bytes,
            DiskSettings::default().reserve_bytes
        );
    }
}
