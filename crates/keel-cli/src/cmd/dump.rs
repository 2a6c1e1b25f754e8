//! `keel dump` and `keel restore`: portable, verified archives of a store.
//!
//! Parsing and printing only: the archive format lives in `keel_fsck::dump`.

use std::path::PathBuf;

use clap::Args;
use keel_fsck::check::{resolve_target, TargetChoice};
use keel_fsck::dump::{self, Source};
use keel_store::{Store, StoreOptions};

use super::DataDirArg;
use crate::output::Output;

#[derive(Args, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    /// Dump this retained checkpoint instead of the current state.
    #[arg(long, value_name = "SEQ")]
    pub checkpoint: Option<u64>,
    /// Skip values and directories that cannot be read (listed in the
    /// manifest) instead of failing: an emergency dump of a damaged store.
    #[arg(long)]
    pub ignore_failed_read: bool,
    /// Dump only keys at or below this prefix (repeatable), e.g. the
    /// critical ones when no good dump exists.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Vec<String>,
    /// The archive to write (a tar file; written atomically).
    pub file: PathBuf,
}

#[derive(Args, Debug)]
#[command(
    after_help = "The archive is verified completely before anything changes. \
The store's existing contents are REPLACED by the dump's (as a new checkpoint; \
older checkpoints stay readable). A missing or empty data directory is initialised first."
)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    /// The archive written by `keel dump`.
    pub file: PathBuf,
    /// Do not restore now: verify the dump and point D/dump/RESTORE at it,
    /// so the next writer to start restores from it.
    #[arg(long)]
    pub at_next_start: bool,
}

pub fn dump(args: &DumpArgs, out: Output) -> anyhow::Result<()> {
    let store = args.target.open_read_only()?;
    let choice = match args.checkpoint {
        Some(sequence) => TargetChoice::Checkpoint(sequence),
        None => TargetChoice::Head,
    };
    let target = resolve_target(&store, &choice)?;
    let source = Source {
        revision: target.revision,
        checkpoint: target.checkpoint,
        root: target.root,
    };
    let options = dump::DumpOptions {
        ignore_failed_read: args.ignore_failed_read,
        prefixes: args.prefix.clone(),
    };
    let manifest = dump::dump(&store, source, &args.file, &options)?;
    let summary = serde_json::json!({
        "file": args.file,
        "store_id": manifest.store_id,
        "source": manifest.source,
        "keys": manifest.keys.len(),
        "bytes": manifest.total_bytes(),
        "skipped": manifest.skipped,
    });
    out.emit(&summary, || {
        let mut text = format!(
            "dumped {} keys ({} bytes) at revision {} to {}",
            manifest.keys.len(),
            manifest.total_bytes(),
            manifest.source.revision,
            args.file.display()
        );
        for skipped in &manifest.skipped {
            text.push_str(&format!("\nskipped {}: {}", skipped.path, skipped.reason));
        }
        text
    })
}

pub fn restore(args: &RestoreArgs, out: Output) -> anyhow::Result<()> {
    let manifest = dump::verify_archive(&args.file)?;
    let dir = &args.target.data_dir;
    if args.at_next_start {
        keel_store::datadir::read_identity(dir)?;
        let marker = dump::request_restore(dir, &args.file)?;
        let body =
            serde_json::json!({ "marker": marker, "file": args.file, "keys": manifest.keys.len() });
        return out.emit(&body, || {
            format!(
                "verified {} ({} keys); the next start of {} restores from it ({})",
                args.file.display(),
                manifest.keys.len(),
                dir.display(),
                marker.display()
            )
        });
    }
    let empty = std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
    let store = if empty {
        Store::init(dir, StoreOptions::default())?
    } else {
        Store::open(dir, StoreOptions::default())?
    };
    let outcome = dump::restore_verified(&store, &args.file, &manifest)?;
    store.close()?;
    out.emit(&outcome, || {
        format!(
            "restored {} keys ({} bytes) from {} (store {}, revision {}) as checkpoint {} at revision {}; the previous contents were replaced",
            outcome.keys,
            outcome.bytes,
            args.file.display(),
            outcome.source_store_id,
            outcome.source.revision,
            outcome.checkpoint.sequence,
            outcome.checkpoint.revision
        )
    })
}
