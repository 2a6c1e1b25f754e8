//! `keel demo`: a guided tour of a local store (single node for now).

use std::path::PathBuf;

use clap::Args;
use keel_store::{Store, StoreOptions, Txn};

use crate::output::{CliError, Output};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo keeps its data (replaced on every run).
    #[arg(long, default_value = "keel-demo")]
    pub dir: PathBuf,
}

pub fn run(args: &DemoArgs, out: Output) -> anyhow::Result<()> {
    let dir = args.dir.join("store");
    if dir.exists() {
        // Only ever remove a Keel store the demo made.
        keel_store::datadir::read_identity(&dir)
            .map_err(|e| CliError::usage(format!("refusing to replace {}: {e}", dir.display())))?;
        std::fs::remove_dir_all(&dir)?;
    }
    let store = Store::init(&dir, StoreOptions::default())?;
    store.commit(&[Txn::put("apps/web/config", "port=8080\nworkers=4\n")])?;
    store.commit(&[Txn::put("apps/db/config", "size=large\n")])?;
    let first = store.checkpoint()?;
    store.commit(&[Txn::put("apps/web/config", "port=9090\nworkers=8\n")])?;
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    store.commit(&[Txn::put("blobs/big", big.clone())])?;
    let second = store.checkpoint()?;
    let then = store
        .at_checkpoint(first.sequence)?
        .get_value("apps/web/config")?;
    let now = store.snapshot().get_value("apps/web/config")?;
    let stats = store.stats();
    let summary = serde_json::json!({
        "data_dir": dir,
        "revision": store.revision(),
        "checkpoints": [first, second],
        "apps/web/config at first checkpoint": then.as_deref().map(String::from_utf8_lossy),
        "apps/web/config now": now.as_deref().map(String::from_utf8_lossy),
        "pack_bytes": stats.pack_bytes,
    });
    store.close()?;
    let data_dir = dir.display();
    let keel =
        std::env::current_exe().map_or_else(|_| "keel".to_string(), |p| p.display().to_string());
    out.emit(&summary, || {
        format!(
            "Keel store demo in {data_dir}\n\
             wrote 4 commits (revision {rev}), including an 8 MiB value stored as content-defined chunks\n\
             checkpoint {s1}: apps/web/config = {then:?}\n\
             checkpoint {s2}: apps/web/config = {now:?}\n\
             pack: {bytes} bytes in {segments} segment(s)\n\n\
             Try:\n  {keel} kv ls --data-dir {data_dir} -r -l\n  {keel} kv get --data-dir {data_dir} apps/web/config\n  \
             {keel} kv get --data-dir {data_dir} apps/web/config --checkpoint {s1}\n  {keel} checkpoint list --data-dir {data_dir}",
            rev = stats.revision,
            s1 = first.sequence,
            s2 = second.sequence,
            then = then.as_deref().map(String::from_utf8_lossy).unwrap_or_default(),
            now = now.as_deref().map(String::from_utf8_lossy).unwrap_or_default(),
            bytes = stats.pack_bytes,
            segments = stats.segments,
        )
    })
}
