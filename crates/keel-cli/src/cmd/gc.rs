//! `keel gc`: reclaim space held by blobs nothing retained can reach.

use clap::Args;

use super::DataDirArg;
use crate::output::Output;

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    /// Compact every sealed segment, not only mostly-garbage ones.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &GcArgs, out: Output) -> anyhow::Result<()> {
    let store = args.target.open()?;
    let report = store.gc(args.force)?;
    store.close()?;
    out.emit(&report, || {
        format!(
            "compacted {} of {} sealed segments, reclaimed {} bytes ({} live blobs) in {} ms",
            report.segments_compacted,
            report.segments_examined,
            report.bytes_reclaimed,
            report.live_blobs,
            report.elapsed_ms
        )
    })
}
