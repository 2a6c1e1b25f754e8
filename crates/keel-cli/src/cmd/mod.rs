//! One module per command group.

pub mod bench;
pub mod checkpoint;
pub mod debug;
pub mod demo;
pub mod dump;
pub mod fsck;
pub mod gc;
pub mod init;
pub mod kv;

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
