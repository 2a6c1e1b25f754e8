//! One module per command group.

pub mod bench;
pub mod checkpoint;
pub mod debug;
pub mod demo;
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
    /// Opens the store for writing (takes the single-writer lock).
    pub fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.data_dir, StoreOptions::default())?)
    }

    /// Opens the store for reading only: works while another process holds it.
    pub fn open_read_only(&self) -> anyhow::Result<Store> {
        Ok(Store::open_read_only(&self.data_dir)?)
    }
}
