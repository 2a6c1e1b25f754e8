//! `keel init`: create a store.

use clap::Args;
use keel_store::{Store, StoreOptions};

use super::DataDirArg;
use crate::output::Output;

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub target: DataDirArg,
}

pub fn run(args: &InitArgs, out: Output) -> anyhow::Result<()> {
    let store = Store::init(&args.target.data_dir, StoreOptions::default())?;
    let identity = store.identity().clone();
    store.close()?;
    out.emit(&identity, || {
        format!(
            "initialised Keel store {} in {}",
            identity.store_id,
            args.target.data_dir.display()
        )
    })
}
