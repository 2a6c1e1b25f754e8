//! One module per command group.

pub mod bench;
pub mod checkpoint;
pub mod cluster;
pub mod debug;
pub mod demo;
pub mod diag;
pub mod dump;
pub mod fsck;
pub mod gc;
pub mod init;
pub mod kv;
pub mod primary;
pub mod run;

use std::path::PathBuf;

use clap::Args;
use keel_store::{Store, StoreOptions};

/// The offline target: a stopped node's data directory.
#[derive(Args, Clone, Debug)]
pub struct DataDirArg {
    /// Data directory of the store (offline access; works on a stopped node).
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
}

impl DataDirArg {
    /// Opens the store for writing (takes the single-writer lock) after the
    /// start-up check: a pending `dump/RESTORE` is restored, and a store not
    /// closed cleanly is verified (small damage repaired, larger refused with
    /// the `keel fsck` command to run).
    pub fn open(&self) -> anyhow::Result<Store> {
        let policy = keel_fsck::startup::StartupPolicy {
            options: StoreOptions::default(),
            ..Default::default()
        };
        let (store, startup) = keel_fsck::startup::open_for_writing(&self.data_dir, &policy)?;
        if let Some(dump) = &startup.restored_from {
            eprintln!(
                "keel: restored {} from {} (dump/RESTORE)",
                self.data_dir.display(),
                dump.display()
            );
        }
        if startup.repaired_keys > 0 {
            let report = startup
                .report_file
                .as_ref()
                .map_or(String::new(), |p| format!("; report: {}", p.display()));
            eprintln!(
                "keel: the start-up check repaired {} damaged key(s) of {} (moved to lost+found/){report}",
                startup.repaired_keys,
                self.data_dir.display()
            );
        }
        Ok(store)
    }

    /// Opens the store for reading only: works while another process holds it.
    pub fn open_read_only(&self) -> anyhow::Result<Store> {
        Ok(Store::open_read_only(&self.data_dir)?)
    }
}

/// The endpoint online commands use when none is given: the local node.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7001";

/// Where a command acts: a data directory (offline) or a node (online).
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Data directory (offline: a stopped node's data).
    #[arg(
        long,
        env = "KEEL_DATA_DIR",
        value_name = "DIR",
        conflicts_with = "endpoint"
    )]
    pub data_dir: Option<PathBuf>,
    /// A node's URL (online; default: the local node, http://127.0.0.1:7001).
    #[arg(long, env = "KEEL_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
}

/// A resolved target.
pub enum Place {
    Offline(DataDirArg),
    Online(keel_node::client::Client),
}

impl Target {
    pub fn place(&self) -> Place {
        match &self.data_dir {
            Some(dir) => Place::Offline(DataDirArg {
                data_dir: dir.clone(),
            }),
            None => Place::Online(keel_node::client::Client::new(
                self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
            )),
        }
    }
}

/// Offline writes to a node that has served as a cluster member would make
/// it diverge from its peers: refuse them.
pub fn refuse_offline_write_to_member(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.join("raft").exists() && keel_node::identity::NodeIdentity::exists(dir) {
        return Err(crate::output::CliError::usage(format!(
            "{} belongs to a cluster member that has served; an offline write would make it diverge \
             from its peers. Write through the cluster with --endpoint URL instead",
            dir.display()
        )));
    }
    Ok(())
}

/// Runs a future on a fresh runtime (online commands).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future)
}
