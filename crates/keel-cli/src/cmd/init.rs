//! `keel init`: create a store, and (unless `--standalone`) found a cluster
//! with this node as its first member.

use clap::Args;
use keel_store::{Store, StoreOptions};

use super::DataDirArg;
use crate::output::Output;

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    /// Only create a store; do not found a cluster.
    #[arg(long)]
    pub standalone: bool,
}

pub fn run(args: &InitArgs, out: Output) -> anyhow::Result<()> {
    let dir = &args.target.data_dir;
    if args.standalone {
        let store = Store::init(dir, StoreOptions::default())?;
        let identity = store.identity().clone();
        store.close()?;
        return out.emit(&identity, || {
            format!(
                "initialised Keel store {} in {}",
                identity.store_id,
                dir.display()
            )
        });
    }
    // A store that exists already is an error here, as for any init.
    Store::init(dir, StoreOptions::default())?.close()?;
    let founded = keel_node::admin::init_cluster(dir)?;
    out.emit(&founded, || {
        format!(
            "initialised Keel store {} in {}\nfounded cluster {} with this node as node 1\n\
             join token: {}\nstart it with: keel serve --data-dir {} --listen 127.0.0.1:7001\n\
             add nodes with: keel join --data-dir DIR --endpoint http://127.0.0.1:7001 --token {} --listen ADDR",
            founded.store_id,
            dir.display(),
            founded.cluster_id,
            founded.join_token,
            dir.display(),
            founded.join_token
        )
    })
}
